"""Install the audio knowledge-distillation library ``kd_modules``."""

from setuptools import find_packages, setup

setup(
    name="kd_modules",
    version="0.1.0",
    description="Knowledge distillation for audio models, on SpeechBrain",
    packages=find_packages(include=["kd_modules", "kd_modules.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "speechbrain==1.1.2",
        "hyperpyyaml>=1.2",
        "soundfile>=0.12",
        "sox>=1.4",
        "numpy",
        "tqdm",
        "matplotlib",
        "safetensors>=0.4",  # the teacher cache's shard format (kd_modules.cache)
        "pyyaml",
    ],
    # captum: the IG reference in tests; import-linter: make lint's import contract (.importlinter)
    extras_require={
        # kd_modules.export: ONNX files, ONNX Runtime parity and latency, int8 quantisation (the
        # TorchScript-based exporter it uses needs no onnxscript)
        "export": ["onnx>=1.17", "onnxruntime>=1.20"],
        # YAML key tensorboard: True (run.sh --tensorboard true): SpeechBrain's TensorboardLogger
        # writes through torch.utils.tensorboard, which needs the tensorboard package
        "tensorboard": ["tensorboard>=2.14"],
        # --teacher_source resemblyzer: the pretrained GE2E's weights (resemblyzer/pretrained.pt),
        # read from the installed package without importing it (kd_modules.hub.resemblyzer)
        "pretrained": ["resemblyzer==0.1.4"],
        # onnx, onnxruntime, tensorboard: the export and TensorBoard tests; resemblyzer (with
        # its webrtcvad and librosa): the GE2E parity tests' reference (tests/unit/test_ge2e.py)
        "dev": [
            "pytest",
            "ruff",
            "captum",
            "import-linter",
            "onnx>=1.17",
            "onnxruntime>=1.20",
            "tensorboard>=2.14",
            "resemblyzer==0.1.4",
        ],
    },
    entry_points={
        "console_scripts": [
            "kd-collect-results=kd_modules.results:main",
        ]
    },
)
