"""Where a ``--teacher_source`` teacher comes from: a registered name, a local hub-format folder,
or a SpeechBrain hub id ``owner/name``.

``SOURCES`` maps a name to a loader ``(hparams) -> Teacher`` (e.g. ``resemblyzer``, a teacher
whose weights ship in a Python package); any other SOURCE is a folder when one exists at that
path, else a hub id, fetched with ``huggingface_hub`` (the network is needed: offline this fails
in one line saying how to download the folder and pass it instead).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from kd_modules.cache import TeacherCache
from kd_modules.hparams import OneLineError
from kd_modules.hub.resemblyzer import load_resemblyzer_teacher
from kd_modules.teacher import IntegratedTeacher, Teacher, as_composed, load_teacher
from kd_modules.teacher import load_teacher_side as experiment_teacher_side

SOURCES: dict[str, Callable[[dict], Teacher]] = {}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class TeacherSourceError(OneLineError, RuntimeError):
    """A --teacher_source that names no registered teacher, folder or reachable hub id."""


def register_source(name: str, loader: Callable[[dict], Teacher]) -> None:
    """Make ``--teacher_source NAME`` load ``loader(hparams)`` (a frozen Teacher)."""
    SOURCES[name] = loader


register_source("resemblyzer", load_resemblyzer_teacher)  # pip install -e '.[pretrained]'


def dataset_labels(hparams: dict) -> list[str] | None:
    """The dataset's class names in its label order, from hparams ``teacher_classes_file`` (a
    JSON list, or a JSON dict name -> index as speakers.json), or None when unset or absent."""
    file = hparams.get("teacher_classes_file")
    if not file or not Path(file).is_file():
        return None
    labels = json.loads(Path(file).read_text())
    if isinstance(labels, dict):
        return [name for name, _ in sorted(labels.items(), key=lambda item: int(item[1]))]
    return [str(label) for label in labels]


def download_hub_id(hub_id: str, folder: Path) -> Path:
    """``hub_id``'s files in ``folder`` (huggingface_hub's snapshot), or a one-line refusal when
    the hub cannot be reached."""
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(hub_id, local_dir=str(folder)))
    except (OSError, huggingface_hub.errors.HfHubHTTPError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TeacherSourceError(
            f"--teacher_source {hub_id}: cannot download it from the SpeechBrain hub "
            f"(huggingface.co; {reason}): the hub needs the network. On a machine that has it, "
            f"run `huggingface-cli download {hub_id} --local-dir DIR` (or `git clone "
            f"https://huggingface.co/{hub_id} DIR`), copy DIR here and pass --teacher_source DIR"
        ) from None


def source_folder(source: str, download_root: Path) -> Path:
    """The local hub-format folder of ``source``: itself when it is a folder, else the hub id's
    download under ``download_root``."""
    path = Path(source)
    if path.is_dir():
        return path
    if not HUB_ID.fullmatch(source):
        known = ", ".join(sorted(SOURCES)) or "none"
        raise TeacherSourceError(
            f"--teacher_source {source}: no such folder, and not a hub id owner/name "
            f"(registered teachers: {known})"
        )
    return download_hub_id(source, download_root / source.replace("/", "--"))


def load_source_teacher(hparams: dict) -> Teacher:
    """The frozen teacher named by hparams ``teacher_source`` (with ``teacher_taps``,
    ``trust_teacher_code``, ``teacher_source_yaml`` and ``teacher_classes_file``)."""
    from kd_modules.hub.teacher import load_hub_teacher

    source = str(hparams["teacher_source"])
    if source in SOURCES:
        return SOURCES[source](hparams)
    root = Path(hparams["exp_root"]) / "hub"
    folder = source_folder(source, root)
    return load_hub_teacher(
        folder,
        taps=hparams["teacher_taps"],
        dataset_labels=dataset_labels(hparams),
        trust_code=bool(hparams.get("trust_teacher_code", False)),
        teacher_yaml=hparams.get("teacher_source_yaml"),
        savedir=root / "pretrained" / Path(folder).resolve().name,
        source=source,
    )


def load_any_teacher(hparams: dict) -> Teacher | IntegratedTeacher:
    """The frozen teacher of a KD run: hparams ``teacher_source`` when set (its logit KD terms
    checked against its classes, :func:`~kd_modules.hub.teacher.check_logit_terms`), else the
    stage-2 experiment in ``teacher_folder`` (:func:`kd_modules.teacher.load_teacher`)."""
    from kd_modules.hub.teacher import check_logit_terms

    if not hparams.get("teacher_source"):
        return load_teacher(hparams)
    teacher = load_source_teacher(hparams)
    check_logit_terms(hparams.get("kd_losses") or {}, teacher)
    return as_composed(teacher, hparams)


def load_teacher_side(hparams: dict) -> tuple[Teacher | None, TeacherCache | None]:
    """:func:`kd_modules.teacher.load_teacher_side` with ``--teacher_source`` teachers served."""
    return experiment_teacher_side(hparams, loader=load_any_teacher)
