# make demo : build the environment if missing, then run the sound-classification recipe end to end
#             on the real FSDD clips shipped in tests/samples (about 5 minutes on 2 CPU cores), then
#             export its students (stage 9, with int8) and write the report again with their ONNX
#             latency and size (stage 9 comes after the report and is opt-in: it needs the export
#             extra, which make env installs).
# make test : build the environment if missing, then lint and run the whole test suite (with the
#             tests marked slow, which train through the recipes), after the GPU check's CPU run
#             (tools/gpu_check.sh --device cpu: every step group at tiny sizes, so it cannot rot).
# make test-fast : lint, then every test not marked slow (pytest -m "not slow"): the loop
#                  to run while editing, in a few minutes on 2 CPU cores.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed

.PHONY: env demo test test-fast lint clean-demo

$(STAMP): setup.py
	@echo "[make] creating the environment in $(VENV) (torch 2.11, torchaudio 2.11, speechbrain 1.1.2)"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip "setuptools<82" wheel  # torch 2.11 needs setuptools < 82
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

DEMO := cd recipes/sound_classification && ./run.sh --python $(PY) --dataset fsdd \
	--data_root ../../tests/samples/fsdd/free-spoken-digit-dataset --split seeded \
	--teacher xvector_large --device cpu --exp_dir exp --data_dir data --augment false

demo: env
	$(DEMO)
	$(DEMO) --stage 9 --stop_stage 9 --quantize true
	$(DEMO) --stage 8 --stop_stage 8

test: env lint
	PYTHON=$(PY) tools/gpu_check.sh --device cpu --precisions fp32 bf16  # tiny sizes, < 1 min; fp16: README
	$(PY) -m pytest -q tests

test-fast: env lint
	$(PY) -m pytest -q -m "not slow" tests

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .  # the formatter's layout (Python files; pyproject.toml)
	$(VENV)/bin/lint-imports  # the rooms and their import order, no circles (.importlinter)

clean-demo:
	rm -rf recipes/sound_classification/exp/fsdd recipes/sound_classification/data/fsdd
