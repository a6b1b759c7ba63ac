"""The frozen teacher: loaded from a finished experiment, always in eval mode, never trained.

A KD run gets it from its hparams (:func:`load_teacher_side`: ``teacher_folder``,
``teacher_taps``, ``teacher_selection``, ``allow_unfinished_teacher``, ``use_teacher_cache``),
refused while its training is unfinished, with its cache (``kd_modules.cache``) when asked.

The teacher is deliberately *not* an ``nn.Module`` attribute of a Brain's ``modules``: SpeechBrain
therefore never switches it to train mode, never hands its parameters to the optimiser, never
wraps it in DDP and never writes it into the student's checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from torch import nn

from kd_modules.cache import TeacherCache, cache_key, check_deterministic_inputs
from kd_modules.checkpoints import Checkpointer
from kd_modules.hparams import OneLineError
from kd_modules.run_folder import training_status
from kd_modules.taps import FeatureTaps

logger = logging.getLogger(__name__)


def fingerprint_module(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's state: parameter/buffer names, shapes and bytes.

    Two teachers with the same fingerprint produce the same outputs, so cached outputs keyed by it
    are valid exactly as long as the weights are unchanged.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(
            tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore Python's, NumPy's, torch's (CPU and CUDA) and SpeechBrain's seeds on exit.

    SpeechBrain's ``seed_everything`` also sets ``SB_GLOBAL_SEED``, which seeds the training
    sampler's shuffle: a teacher's saved YAML must not impose its seed on the student's data order.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    sb_seed = os.environ.get("SB_GLOBAL_SEED")
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if sb_seed is None:
            os.environ.pop("SB_GLOBAL_SEED", None)
        else:
            os.environ["SB_GLOBAL_SEED"] = sb_seed


class Teacher:
    """A frozen model plus optional feature taps; calling it returns detached outputs.

    Arguments
    ---------
    model : nn.Module
        Returns a dict of named outputs (``logits``, ``embedding``, ...) for ``(feats, lens)``.
    taps : dict, optional
        Output name -> dotted module path inside ``model`` (see ``FeatureTaps``).
    """

    def __init__(self, model: nn.Module, taps: dict[str, str] | None = None) -> None:
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.taps = FeatureTaps(model, dict(taps or {}))
        self.fingerprint = fingerprint_module(model)

    def to(self, device: str | torch.device) -> Teacher:
        """Move the teacher's weights to ``device``."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, feats: torch.Tensor, lens: torch.Tensor | None = None, targets=None) -> dict:
        """Teacher outputs for features ``(B, T, F)``, tapped features included, all detached.

        ``targets`` (the batch's class ids) are ignored here; teachers whose outputs depend on
        the labels (:class:`IntegratedTeacher`) read them.
        """
        self.model.eval()  # whatever happened to it, the teacher runs with running statistics
        outputs = dict(self.model(feats, lens))
        outputs.update(self.taps.features)
        return {name: value.detach() for name, value in outputs.items()}

    @classmethod
    def from_experiment(
        cls,
        exp_dir: str | Path,
        taps: dict[str, str] | None = None,
        max_key: str | None = None,
        min_key: str | None = None,
        model_key: str = "model",
    ) -> Teacher:
        """Load the teacher trained in ``exp_dir`` (its ``hyperparams.yaml`` and best checkpoint).

        The architecture is rebuilt from the experiment's own saved hyperparameters, so a teacher
        can never be loaded into the wrong architecture silently; the checkpoint is chosen by
        ``max_key``/``min_key`` from the metadata written at validation (e.g. ``accuracy``).
        """
        exp_dir = Path(exp_dir)
        hparams_file = exp_dir / "hyperparams.yaml"
        if not hparams_file.is_file():
            raise FileNotFoundError(
                f"No teacher at {exp_dir}: {hparams_file.name} is missing (train it first, stage 2)"
            )
        with open(hparams_file) as stream, preserved_random_state():
            hparams = load_hyperpyyaml(stream)  # its own seeding must not reseed the caller
        taps = resolve_tap_points(taps, hparams.get("tap_points"), exp_dir)
        model = hparams[model_key]
        checkpointer = Checkpointer(exp_dir / "save", recoverables={model_key: model})
        checkpoint = checkpointer.find_checkpoint(max_key=max_key, min_key=min_key)
        if checkpoint is None:
            raise FileNotFoundError(f"No checkpoint of the teacher under {exp_dir / 'save'}")
        state = torch.load(checkpoint.paramfiles[model_key], map_location="cpu")
        model.load_state_dict(state)
        logger.info("Teacher loaded from %s", checkpoint.path)
        teacher = cls(model, taps)
        teacher.checkpoint = str(checkpoint.path)
        return teacher


class MissingTapPoint(OneLineError, KeyError):
    """A KD method taps a role (``"@pre"``) its teacher does not declare: one line naming both, no
    traceback (e.g. FRAMI's reuse with a teacher that has no statistics pooling)."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0])


def resolve_tap_points(
    taps: dict[str, str] | None, tap_points: dict[str, str] | None, exp_dir: Path
) -> dict[str, str]:
    """Taps written ``@role`` name the teacher's own ``tap_points[role]``; others are module paths.

    A KD method's YAML cannot know where, in whichever teacher a user trained, its feature lives
    (SP's last frame-level layer is ``encoder.blocks.14`` in an x-vector, ``frames`` in a CNN).
    Each teacher architecture's YAML declares ``tap_points`` (role -> module path), saved with the
    teacher's hyperparams; a method asks for ``@frames`` and works with every teacher that has it.
    """
    resolved = {}
    for name, path in (taps or {}).items():
        if not path.startswith("@"):
            resolved[name] = path
            continue
        role = path[1:]
        if not tap_points or role not in tap_points:
            have = ", ".join(sorted(tap_points or {})) or "none"
            raise MissingTapPoint(
                f"the teacher in {exp_dir} declares no tap point {role!r} (tap {name!r} asks for "
                f"{path}); its architecture YAML's tap_points: {have} (a teacher trained before "
                "tap points existed: add its arch YAML's tap_points to its hyperparams.yaml)"
            )
        resolved[name] = tap_points[role]
    return resolved


TRUE_TAGS_SCORE = "sigmoid"  # IntegratedTeacher's score_key of multi-label (tagging) teachers


def attributed_score(outputs: dict, key: str, targets: torch.Tensor) -> torch.Tensor:
    """The teacher output IG attributes, one per row ``(N,)``: ``outputs[key]`` of the true
    class ``targets`` ``(N,)`` (``cosine``: a speaker model's AAM cosine; ``logits``: a
    classifier's), or for ``key`` ``"sigmoid"`` (a tagger) the summed sigmoid scores of the true
    tags, ``Σ_k y_k·σ(z_k)`` with ``targets`` y ``(N, K)`` in {0, 1} (a clip with no tag: 0, a
    zero map, x̃ = x)."""
    if key == TRUE_TAGS_SCORE:
        return (torch.sigmoid(outputs["logits"].float()) * targets).sum(1)
    return outputs[key].gather(1, targets.unsqueeze(1)).squeeze(1)


UTTERANCE_COSINE = "utterance_cosine"  # IntegratedTeacher's label-free score_key


def float32(device: torch.device) -> torch.autocast:
    """Autocast off on ``device``: IML-KD's maps are integrated gradients in float32 whatever the
    caller's AMP (under fp16 the ECAPA statistics pooling's variance of the near-baseline steps
    underflows and the maps come out NaN, measured by tools/gpu_check.py)."""
    return torch.autocast(device.type, enabled=False)


class IntegratedTeacher:
    """IML-KD's teacher: its outputs on the *integrated input* of each batch, and that input's
    weight map.

    For features ``x`` ``(B, T, F)`` and the true classes ``targets`` ``(B,)``, ``integrated``
    (a :class:`kd_modules.attribution.IntegratedInput`) computes the integrated-gradients maps of
    the teacher's ``score_key`` output of the true class (the AAM cosine of the true speaker,
    docs/METHODS.md §2) at each segment duration and their weight ``w`` ``(B, T', F)``; the teacher
    then runs on ``x̃ = integrated.apply(x, w)``. Returns the teacher's outputs on ``x̃`` plus
    ``ig_weight`` = ``w``, so a teacher cache stores the map with the outputs and a KD run
    builds the student's ``x̃`` from the same map. Its fingerprint covers the teacher and the
    integrated-input settings (a cache keyed by it is rebuilt when either changes).

    ``score_key`` ``"utterance_cosine"`` needs no classifier and no labels: the attributed score
    of a segment is the cosine of its embedding with the whole utterance's (the teacher's
    ``embedding`` of ``x``, held fixed), ``cos(e(x_seg), e(x))`` (:meth:`label_free_maps`).
    """

    def __init__(self, teacher: Teacher, integrated, score_key: str = "cosine") -> None:
        self.teacher, self.integrated, self.score_key = teacher, integrated, score_key
        self.checkpoint = getattr(teacher, "checkpoint", None)
        settings = json.dumps({"score": score_key, **integrated.settings()}, sort_keys=True)
        self.fingerprint = hashlib.sha256(f"{teacher.fingerprint}:{settings}".encode()).hexdigest()[
            :16
        ]

    @property
    def model(self) -> nn.Module:
        return self.teacher.model

    def to(self, device: str | torch.device) -> IntegratedTeacher:
        self.teacher.to(device)
        return self

    def maps(self, feats: torch.Tensor, lens: torch.Tensor, targets) -> list[torch.Tensor]:
        """The IG maps ``A_d`` ``(B, T, F)``, one per duration, of the teacher's ``score_key``
        output of each utterance's true class ``targets`` ``(B,)``."""
        model, key = self.teacher.model.eval(), self.score_key
        if key == UTTERANCE_COSINE:
            return self.label_free_maps(feats, lens)
        targets = torch.as_tensor(targets, device=feats.device)
        if key == TRUE_TAGS_SCORE:  # multi-label: the 0/1 tags (B, K)
            targets = targets.float().reshape(feats.shape[0], -1)
        else:
            targets = targets.reshape(-1).long()

        def score(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """(N, t, F) segments of the utterances ``rows`` -> (N,) true-class scores."""
            out = model(x, torch.ones(x.shape[0], device=x.device))
            return attributed_score(out, key, targets[rows])

        with torch.enable_grad(), float32(feats.device):
            return self.integrated.maps(score, feats.detach().float(), lens)

    def label_free_maps(self, feats: torch.Tensor, lens: torch.Tensor) -> list[torch.Tensor]:
        """The IG maps ``A_d`` ``(B, T, F)`` of ``cos(e(segment), e(utterance))``: each segment's
        embedding against its whole utterance's ``(B, E)`` (computed once, no gradient)."""
        model = self.teacher.model.eval()
        with torch.no_grad(), float32(feats.device):
            whole = model(feats.detach().float(), lens)["embedding"].reshape(feats.shape[0], -1)

        def score(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """(N, t, F) segments of the utterances ``rows`` -> (N,) cosines with the whole."""
            out = model(x, torch.ones(x.shape[0], device=x.device))["embedding"]
            return F.cosine_similarity(out.reshape(x.shape[0], -1), whole[rows], dim=1)

        with torch.enable_grad(), float32(feats.device):
            return self.integrated.maps(score, feats.detach().float(), lens)

    def __call__(self, feats: torch.Tensor, lens: torch.Tensor | None, targets=None) -> dict:
        """Outputs on ``x̃`` plus ``ig_weight`` ``(B, T', F)``; ``targets`` ``(B,)`` required
        unless the score is label-free (``utterance_cosine``)."""
        if targets is None and self.score_key != UTTERANCE_COSINE:
            raise ValueError(
                "IntegratedTeacher needs the batch's true classes (targets) to attribute the "
                f"teacher's {self.score_key!r} score: pass them to the teacher call"
            )
        if lens is None:
            lens = torch.ones(feats.shape[0], device=feats.device)
        weight = self.integrated.weight(self.maps(feats, lens, targets), lens)
        outputs = self.teacher(self.integrated.apply(feats, weight.to(feats.dtype)), lens)
        return {**outputs, "ig_weight": weight.detach()}


# ----- the teacher of a KD run, from its hparams ------------------------------------------------


class UnfinishedTeacherError(RuntimeError):
    """A KD stage was asked to learn from a teacher whose training has not finished."""


def require_finished_teacher(teacher_folder: str | Path, allow_unfinished: bool) -> None:
    """Refuse (``UnfinishedTeacherError``) a teacher whose training has not finished.

    A teacher killed during its epoch 2 of 3 still has its epoch-1 checkpoint: distilling from it
    silently would give students of a teacher that is about to change.
    """
    status = training_status(teacher_folder)
    if status["finished"] or allow_unfinished:
        return
    progress = (
        f"{status['epochs_done']} of {status['epochs']} epochs done"
        if status["epochs_done"] is not None
        else "no finished training session recorded"
    )
    raise UnfinishedTeacherError(
        f"The teacher at {teacher_folder} has not finished training ({progress}). Finish it "
        "first (run.sh --stage 2), or distil from it as it is with "
        "run.sh --allow_unfinished_teacher true (YAML: allow_unfinished_teacher: True)."
    )


def teacher_cache_folder(hparams: dict, teacher: Teacher) -> Path:
    """``<exp_root>/cache/<key>``: the key covers the teacher, the front end, the taps, the
    training manifest (a re-prepared split gets a new cache), the replayed augmentation (policy,
    views, seed) and the storage (dtype, top-k). Refuses random transforms it cannot replay."""
    check_deterministic_inputs(hparams["random_input_settings"])
    replay = hparams.get("view_replay")
    features = hparams["feature_settings"]
    own = getattr(getattr(teacher, "teacher", teacher), "front_end_settings", None)
    if own is not None:  # a teacher on its own front end: both sides' inputs change its outputs
        features = {"student": features, "teacher": own}
    key = cache_key(
        teacher.fingerprint,
        features,
        hparams["teacher_taps"],
        manifest=hparams["train_annotation"],
        augmentation=replay.settings() if replay is not None else None,
        storage={"dtype": hparams.get("cache_dtype"), "topk": hparams.get("cache_topk")},
    )
    return Path(hparams["exp_root"]) / "cache" / key


def teacher_views(teacher, replay, device: str | torch.device = "cpu") -> Callable:
    """Stage 3's ``views(batch) -> (teacher input, parameters (B, P))`` for same-length views.

    A teacher on the student's front end gets the views' features, masks included
    (:meth:`~kd_modules.replay.ViewReplay.features`); a teacher on its own front end
    (``own_front_end``) gets the cropped waveforms ``(B, S)``: the crop is replayed on both
    sides, the masks (drawn on the student's frames and bands) on the student's features only.
    """
    own = getattr(teacher, "own_front_end", False)

    def views(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        feats, params = replay.features(batch, device)
        if not own:
            return feats, params
        return torch.stack([wave for _, _, wave, _ in batch]).to(device), params

    return views


def load_teacher(hparams: dict) -> Teacher | IntegratedTeacher:
    """The frozen teacher of a KD run, refused while its training is unfinished; wrapped as an
    :class:`IntegratedTeacher` when the composition has an ``integrated_input`` (IML-KD)."""
    require_finished_teacher(hparams["teacher_folder"], hparams["allow_unfinished_teacher"])
    teacher = Teacher.from_experiment(
        hparams["teacher_folder"], taps=hparams["teacher_taps"], **hparams["teacher_selection"]
    )
    return as_composed(teacher, hparams)


def as_composed(teacher: Teacher, hparams: dict) -> Teacher | IntegratedTeacher:
    """``teacher`` as the composition distils from it: an :class:`IntegratedTeacher` when it
    has an ``integrated_input`` (IML-KD), else itself."""
    integrated = hparams.get("integrated_input")
    if integrated is None:
        return teacher
    if getattr(teacher, "own_front_end", False):
        raise OneLineError(
            "IML-KD's integrated input is built on the student's features, and this teacher "
            "has its own front end: distil it with a method without an integrated_input"
        )
    return IntegratedTeacher(teacher, integrated, score_key=hparams["attribution_score"])


def teacher_targets(hparams: dict, dataset) -> Callable[[list[str]], Any] | None:
    """Utterance ids -> their classes ``(B,)`` from the manifest field ``teacher_targets`` (for
    a teacher whose outputs depend on the true class), or None when the key is unset. A name that
    is no manifest field is the dataset's dynamic item of that name (a tagger's ``targets``,
    ``(B, K)``)."""
    field = hparams.get("teacher_targets")
    if not field:
        return None
    if field in dataset.data[dataset.data_ids[0]]:
        return lambda ids: torch.tensor([int(dataset.data[utt][field]) for utt in ids])
    position = {utt: i for i, utt in enumerate(dataset.data_ids)}

    def computed(ids: list[str]) -> torch.Tensor:
        """The dataset's own item ``field`` (e.g. a tagger's 0/1 targets ``(K,)``), stacked."""
        with dataset.output_keys_as([field]):
            return torch.stack([torch.as_tensor(dataset[position[utt]][field]) for utt in ids])

    return computed


def load_teacher_side(
    hparams: dict, loader: Callable[[dict], Teacher | IntegratedTeacher] = load_teacher
) -> tuple[Teacher | None, TeacherCache | None]:
    """The frozen teacher (and its cache when ``use_teacher_cache``) for a KD run; ``loader``
    builds the teacher (``kd_modules.hub.sources.load_any_teacher`` also serves
    ``--teacher_source`` teachers)."""
    if hparams["method"] == "none":
        return None, None
    teacher = loader(hparams)
    if not hparams["use_teacher_cache"]:
        return teacher, None
    cache = TeacherCache(teacher_cache_folder(hparams, teacher))
    cache.check_covers(hparams["train_annotation"])
    return teacher, cache
