"""A SpeechBrain pretrained model (a folder in the hub's format) as the frozen teacher of a KD run.

The folder holds what ``speechbrain.inference.classifiers.EncoderClassifier.from_hparams`` loads:
``hyperparams.yaml`` (its ``modules`` and ``pretrainer``), the ``*.ckpt`` files the pretrainer
names and ``label_encoder.txt``. It is loaded through SpeechBrain's own interface, offline: the
hyperparams are checked first (:func:`kd_modules.hub.trust.check_hyperparams`, nothing is built
before), ``pretrained_path`` is overridden to the folder so that the pretrainer never looks at the
hub, and files are used where they are (``LocalStrategy.NO_LINK``).

The teacher takes waveforms through its own front end (``compute_features``, ``mean_var_norm``):
:class:`HubTeacher` declares ``own_front_end``, so the KD run hands it the view's waveform (crop)
while the student keeps its own features (``kd_modules.brains.task``). Its fingerprint hashes the
folder's files; its classes are mapped by name onto the dataset's (:class:`ClassMap`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from kd_modules.hparams import OneLineError
from kd_modules.hub.trust import check_teacher_folder
from kd_modules.teacher import Teacher, resolve_tap_points

logger = logging.getLogger(__name__)

LOGIT_KEYS = ("logits", "cosine")  # the outputs that are indexed by the teacher's classes


class HubFolderError(OneLineError, FileNotFoundError):
    """A --teacher_source folder is not in the hub's format (names the missing file)."""


def folder_fingerprint(hashes: dict[str, str]) -> str:
    """16 hex digits over the files' names and hashes: a new checkpoint is a new teacher."""
    text = json.dumps(hashes, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ClassMap:
    """The teacher's classes (its label encoder) mapped by name onto the dataset's classes.

    ``index`` ``(C,)`` holds, for each of the dataset's C classes in its own order, the teacher's
    output column of the same name; ``missing`` lists the dataset's classes the teacher does not
    have (then no logit output is served, and a logit KD term is refused naming them).
    """

    def __init__(self, teacher_labels: list[str], dataset_labels: list[str] | None) -> None:
        self.teacher_labels = list(teacher_labels)
        self.dataset_labels = None if dataset_labels is None else list(dataset_labels)
        position = {label: i for i, label in enumerate(self.teacher_labels)}
        wanted = self.dataset_labels or []
        self.missing = [label for label in wanted if label not in position]
        mapped = self.dataset_labels is not None and not self.missing
        self.index = torch.tensor([position[x] for x in wanted]) if mapped else None

    @property
    def maps(self) -> bool:
        """True when every dataset class has a teacher column (logit KD is possible)."""
        return self.index is not None

    def apply(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logit outputs ``(B, N)`` re-indexed to the dataset's ``(B, C)``; dropped when the
        classes do not map (or no dataset classes were given), other outputs unchanged."""
        mapped = {}
        for name, value in outputs.items():
            if name not in LOGIT_KEYS:
                mapped[name] = value
            elif self.maps:
                mapped[name] = value.index_select(-1, self.index.to(value.device))
        return mapped

    def describe_missing(self, limit: int = 8) -> str:
        """The missing classes as one short phrase (the first ``limit`` and how many more)."""
        shown = ", ".join(repr(label) for label in self.missing[:limit])
        more = len(self.missing) - limit
        return shown + (f" and {more} more" if more > 0 else "")


class HubModel(nn.Module):
    """A hub EncoderClassifier's modules as one model on waveforms ``(B, S)``.

    Computes exactly ``EncoderClassifier.encode_batch`` (features, sentence normalisation,
    embedding model) and its classifier: ``{"embedding": (B, E), "cosine": (B, N)}`` (the hub
    ECAPA classifiers score cosines) plus ``"logits"`` = ``logit_scale · cosine`` (the AAM scale
    the hub models were trained with; 30 for SpeechBrain's ECAPA recipes).
    """

    def __init__(self, mods: nn.ModuleDict, logit_scale: float = 30.0) -> None:
        super().__init__()
        self.compute_features = mods["compute_features"]
        self.mean_var_norm = mods["mean_var_norm"]
        self.embedding_model = mods["embedding_model"]
        self.classifier = mods["classifier"] if "classifier" in mods else None
        self.logit_scale = float(logit_scale)

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        if lens is None:
            lens = torch.ones(wavs.shape[0], device=wavs.device)
        feats = self.compute_features(wavs.float())
        feats = self.mean_var_norm(feats, lens)
        embedding = self.embedding_model(feats, lens)  # (B, 1, E)
        outputs = {"embedding": embedding.squeeze(1)}
        if self.classifier is not None:
            cosine = self.classifier(embedding).squeeze(1)
            outputs.update(cosine=cosine, logits=self.logit_scale * cosine)
        return outputs


class HubTeacher(Teacher):
    """A hub-format model as a :class:`~kd_modules.teacher.Teacher` on its own front end.

    Called as ``teacher(wavs, lens)`` with the view's waveforms ``(B, S)`` (16 kHz) and their
    relative lengths; outputs detached, logit outputs mapped onto the dataset's classes
    (``class_map``), tapped layers as the model gives them (ECAPA's channels-first ``(B, C, T)``,
    as our own ECAPA teachers'). ``checked`` is
    :func:`kd_modules.hub.trust.check_teacher_folder`'s entry (source, trust choice, callables,
    files' SHA-256), which :meth:`record` gives the run record; ``front_end_settings`` goes into
    the cache key.
    """

    own_front_end = True

    def __init__(
        self,
        model: HubModel,
        taps: dict[str, str] | None,
        class_map: ClassMap,
        source: str,
        checked: dict,
    ) -> None:
        super().__init__(model, taps)
        self.class_map, self.source, self.checked = class_map, source, checked
        self.file_hashes = dict(checked["sha256"])
        self.fingerprint = folder_fingerprint(self.file_hashes)
        self.checkpoint = source

    @property
    def front_end_settings(self) -> dict:
        """What changes the teacher's inputs: its own front end, named by its hyperparams file."""
        return {"own_front_end": True, "hyperparams": self.file_hashes.get("hyperparams.yaml")}

    def record(self) -> dict:
        """The run record's teacher entry: source, files' SHA-256, trust choice, fingerprint."""
        return {**self.checked, "source": self.source, "fingerprint": self.fingerprint}

    @torch.no_grad()
    def __call__(self, wavs: torch.Tensor, lens: torch.Tensor | None = None, targets=None) -> dict:
        self.model.eval()
        outputs = dict(self.model(wavs, lens))
        outputs = self.class_map.apply(outputs)
        outputs.update(self.taps.features)
        return {name: value.detach() for name, value in outputs.items()}


class UnmappedClassesError(OneLineError, ValueError):
    """A logit KD term with a teacher whose classes are not the dataset's (names the missing)."""


def check_logit_terms(losses: dict[str, nn.Module], teacher: Teacher) -> None:
    """Refuse a KD term reading the teacher's logits (``key`` ``logits``/``cosine``) when its
    classes do not map onto the dataset's, naming the term and the missing classes; terms on
    embeddings or features need no shared classes and always pass."""
    class_map = getattr(teacher, "class_map", None)
    if class_map is None or class_map.maps:
        return
    for name, loss in losses.items():
        if getattr(loss, "key", None) not in LOGIT_KEYS:
            continue
        if class_map.dataset_labels is None:
            reason = "the dataset's class names are unknown (hparams teacher_classes_file)"
        else:
            reason = (
                f"{len(class_map.missing)} of the dataset's {len(class_map.dataset_labels)} "
                f"classes are not among the teacher's {len(class_map.teacher_labels)}: "
                f"{class_map.describe_missing()}"
            )
        raise UnmappedClassesError(
            f"KD term {name!r} ({type(loss).__name__}) distils the teacher's {loss.key!r}, but "
            f"{reason}: use a term on embeddings or features (e.g. embedding KD), or a teacher "
            f"whose label_encoder.txt names the dataset's classes"
        )


def check_hub_folder(folder: Path) -> None:
    """Refuse (one line) a folder that lacks ``hyperparams.yaml`` or has no ``*.ckpt``."""
    if not (folder / "hyperparams.yaml").is_file():
        raise HubFolderError(
            f"--teacher_source {folder}: no hyperparams.yaml there (a hub-format folder holds "
            "hyperparams.yaml with its pretrainer, *.ckpt and label_encoder.txt)"
        )
    if not any(folder.glob("*.ckpt")):
        raise HubFolderError(f"--teacher_source {folder}: no *.ckpt file beside hyperparams.yaml")


def load_encoder_classifier(folder: Path, savedir: Path, device: str = "cpu"):
    """``EncoderClassifier.from_hparams`` on a local folder, never touching the network:
    ``pretrained_path`` points the pretrainer at the folder, files are used in place."""
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.utils.fetching import LocalStrategy

    return EncoderClassifier.from_hparams(
        source=str(folder),
        savedir=str(savedir),
        overrides={"pretrained_path": str(folder)},
        local_strategy=LocalStrategy.NO_LINK,
        run_opts={"device": device},
    )


def hub_keys(yaml_file: str | Path | None) -> dict:
    """``hub_tap_points`` and ``hub_logit_scale`` of a YAML file, read as data: tags are kept as
    markers, never built (a hub hyperparams.yaml is code until checked), plain values only."""
    if not yaml_file or not Path(yaml_file).is_file():
        return {}
    import ruamel.yaml

    document = ruamel.yaml.YAML(typ="rt").load(Path(yaml_file).read_text()) or {}
    keys = {}
    points = document.get("hub_tap_points")
    if isinstance(points, dict):
        keys["hub_tap_points"] = {str(role): str(path) for role, path in points.items()}
    scale = document.get("hub_logit_scale")
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        keys["hub_logit_scale"] = float(scale)
    return keys


def read_tap_points(folder: Path, yaml_file: str | Path | None) -> tuple[dict[str, str], float]:
    """``(tap points, logit scale)`` of a hub folder: its own ``hyperparams.yaml``'s
    ``hub_tap_points`` / ``hub_logit_scale`` (written by tools/export_hub.py) first, then the
    recipe's hub teacher YAML's (``hparams/teacher/hub_ecapa.yaml``), else no tap points and the
    scale 30 of SpeechBrain's ECAPA recipes."""
    own, recipe = hub_keys(folder / "hyperparams.yaml"), hub_keys(yaml_file)
    points = own.get("hub_tap_points", recipe.get("hub_tap_points", {}))
    return points, own.get("hub_logit_scale", recipe.get("hub_logit_scale", 30.0))


def load_hub_teacher(
    folder: str | Path,
    savedir: str | Path,
    taps: dict[str, str] | None = None,
    dataset_labels: list[str] | None = None,
    trust_code: bool = False,
    teacher_yaml: str | Path | None = None,
    source: str | None = None,
) -> HubTeacher:
    """The hub-format model in ``folder`` as a frozen :class:`HubTeacher`.

    ``taps`` (name -> ``@role`` or dotted path inside the model: ``embedding_model.blocks.3``)
    are resolved against the folder's or ``teacher_yaml``'s ``hub_tap_points``
    (:func:`read_tap_points`); ``dataset_labels`` (the
    dataset's class names in its own order) map the logits; ``trust_code`` lets a
    ``hyperparams.yaml`` call callables outside the allow-list. ``savedir`` receives what the
    pretrainer collects (a folder outside ``folder``, whose files are hashed). The folder is
    checked before SpeechBrain reads it (:func:`~kd_modules.hub.trust.check_teacher_folder`:
    hyperparams' callables, weights-only checkpoints).
    """
    folder = Path(folder).resolve()
    check_hub_folder(folder)
    checked = check_teacher_folder(folder, trust_code)
    tap_points, logit_scale = read_tap_points(folder, teacher_yaml)
    resolved = resolve_tap_points(taps, tap_points, folder)
    classifier = load_encoder_classifier(folder, Path(savedir))
    labels = (
        classifier.hparams.label_encoder if hasattr(classifier.hparams, "label_encoder") else None
    )
    teacher_labels = [labels.ind2lab[i] for i in range(len(labels))] if labels is not None else []
    model = HubModel(classifier.mods, logit_scale)
    class_map = ClassMap(teacher_labels, dataset_labels)
    logger.info(
        "Teacher loaded from the hub-format folder %s (%d classes)", folder, len(labels or [])
    )
    return HubTeacher(model, resolved, class_map, source or str(folder), checked)
