"""One prepared GPU check: every recipe's training steps at realistic sizes, in fp32, fp16 and bf16.

    tools/gpu_check.sh                      # CUDA: realistic sizes, 200 steps a group
    tools/gpu_check.sh --device cpu         # tiny sizes, 2 steps a group (CI: make test)

Per precision (fp32, and fp16 / bf16 autocast, fp16 with a gradient scaler) it runs, on real
clips (../shared/data's LibriSpeech subset, else tests/samples' FSDD, repeated and cropped):

- ``speaker teacher``: ECAPA-TDNN C = 1024 (hparams/teacher/ecapa_c1024.yaml) on 3 s crops,
  SpeechBrain's AAM softmax, Adam;
- ``tagger teacher``: the CNN tagger (audio_tagging's cnn10.yaml) on 10 s clips, BCE;
- ``classifier teacher``: the statistics-pooling x-vector (sound_classification's
  xvector_large.yaml) at the recipe's batch size, CE;
- ``speaker KD from cache``: ECAPA C = 512 from a teacher cache of the C = 1024 teacher
  (kd_modules.cache_build / kd_modules.cache, crops replayed from the stored views; the cache
  is built once, in fp32 and untimed, before the first precision), AAM + HintonKD;
- ``IML-KD cache (IG)``: stage 3 of IML-KD, the integrated-gradients maps of the teacher's true
  speaker cosine (kd_modules.teacher.IntegratedTeacher through build_teacher_cache), a tenth of
  the steps as cache batches (each is ~10 segments x 20 IG steps of teacher passes a view);
- ``FRAMI synthesis``: kd_modules.synthesis.FRAMI on the classifier teacher.

Each line says samples/s (crops, clips, views or synthesised samples x steps per second, after
one warm-up step), GPU busy % (NVML through pynvml when installed, else nvidia-smi, sampled every
0.1 s during the group), peak memory (CUDA: max allocated; CPU: the process's peak RSS) and
whether every loss stayed finite. Exit status 1 when any group fails or a loss is not finite. A
precision the device cannot run (probed with one autocast step) is skipped and said so.
``--inject_nonfinite GROUP`` puts a NaN into that group's first batch (the test that a
non-finite loss fails the check).
"""

from __future__ import annotations

import argparse
import math
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.features import Fbank
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from speechbrain.processing.features import InputNormalization

from kd_modules.attribution import IntegratedInput
from kd_modules.augment import AugmentPolicy
from kd_modules.cache import TeacherCache
from kd_modules.cache_build import build_teacher_cache
from kd_modules.dataio import read_audio
from kd_modules.losses import HintonKD
from kd_modules.replay import FrontEnd, ViewReplay
from kd_modules.synthesis import FRAMI
from kd_modules.teacher import IntegratedTeacher, Teacher

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
GROUPS = (
    "speaker teacher",
    "tagger teacher",
    "classifier teacher",
    "speaker KD from cache",
    "IML-KD cache (IG)",
    "FRAMI synthesis",
)
CLIP_SOURCES = (
    REPO.parent / "shared" / "data" / "librispeech_subset" / "LibriSpeech",
    REPO / "tests" / "samples" / "fsdd" / "free-spoken-digit-dataset" / "recordings",
)


@dataclass(frozen=True)
class Sizes:
    """Architectures (recipe YAML names), batch sizes and lengths of one check."""

    speaker_teacher: str
    speaker_student: str
    tagger: str
    tagger_width: int
    classifier: str  # a teacher YAML, or "student/<arch>" for a smaller one
    speaker_batch: int
    tagger_batch: int
    classifier_batch: int
    crop_s: float  # speaker crops
    tagger_clip_s: float
    classifier_clip_s: float
    ig_steps: int
    frami_batch: int
    frami_frames: int
    n_speakers: int
    n_tags: int
    n_classes: int


REALISTIC = Sizes(
    "ecapa_c1024", "ecapa_c512", "cnn10", 512, "xvector_large",
    32, 32, 16, 3.0, 10.0, 4.0, 20, 50, 300, 1211, 31, 10,
)  # fmt: skip
TINY = Sizes(
    "ecapa_tiny", "ecapa_tiny", "cnn10", 32, "student/xvector_small",
    2, 2, 2, 0.5, 1.0, 0.5, 2, 4, 40, 4, 5, 3,
)  # fmt: skip


@dataclass
class GroupResult:
    """One line of the table."""

    precision: str
    group: str
    samples_per_s: float = float("nan")
    busy_pct: float | None = None
    peak_mib: float = float("nan")
    finite: bool = True
    skipped: str = "–"  # optimiser steps the fp16 scaler skipped, of all ("2/200")
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.finite and not self.error


# ----- the device: precision, GPU busy %, memory -------------------------------------------------
class Precision:
    """Autocast (and for fp16 a gradient scaler) of one precision on one device; counts the
    optimiser steps and those the scaler skipped (their gradients were not finite)."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device, self.dtype = name, device, PRECISIONS[name]
        enabled = self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=enabled)
        self.steps = self.skipped = 0

    def autocast(self):
        """The forward's context: autocast to the dtype, or nothing in fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and one optimiser step (scaled in fp16)."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(optimizer)
        self.scaler.update()
        self.steps += 1
        self.skipped += self.scaler.is_enabled() and self.scaler.get_scale() < scale


def unsupported_reason(precision: Precision) -> str:
    """Why ``precision`` cannot train on its device ('' when a tiny conv step runs)."""
    if precision.dtype is None:
        return ""
    try:
        conv = torch.nn.Conv1d(4, 4, 3).to(precision.device)
        optimizer = torch.optim.SGD(conv.parameters(), lr=0.1)
        with precision.autocast():
            loss = conv(torch.randn(2, 4, 8, device=precision.device)).float().mean()
        precision.step(loss, optimizer)
    except (RuntimeError, TypeError, ValueError) as error:
        return str(error).splitlines()[0]
    return ""


class BusySampler:
    """GPU utilisation (%) sampled every 0.1 s on a thread: NVML via pynvml, else nvidia-smi."""

    def __init__(self, device: torch.device) -> None:
        self.index = device.index or 0
        self.read = self._nvml() or self._smi()
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _nvml(self) -> Callable[[], float] | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except Exception:  # pynvml absent or no NVML: fall back to nvidia-smi
            return None
        return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def _smi(self) -> Callable[[], float] | None:
        if shutil.which("nvidia-smi") is None:
            return None
        query = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu"]

        def read() -> float:
            out = subprocess.run(query + ["--format=csv,noheader,nounits"], capture_output=True)
            return float(out.stdout.decode().split()[0])

        return read

    def __enter__(self) -> BusySampler:
        self.samples = []
        if self.read is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(self.read())

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def busy_pct(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def peak_mib(device: torch.device) -> float:
    """CUDA: the most memory allocated since the last reset; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----- data and models ---------------------------------------------------------------------------
def real_clips(limit: int = 64) -> list[torch.Tensor]:
    """Waveforms ``(S,)`` at 16 kHz of the first real clips found (see CLIP_SOURCES)."""
    for source in CLIP_SOURCES:
        files = sorted(source.rglob("*.flac"))[:limit]
        if files:
            return [read_audio(path, RATE) for path in files]
    raise SystemExit(f"gpu_check: no real clips in any of {', '.join(map(str, CLIP_SOURCES))}")


def crop_batch(clips: list[torch.Tensor], step: int, batch: int, seconds: float) -> torch.Tensor:
    """``(batch, seconds·16 kHz)`` crops of the clips, each clip repeated to length as needed."""
    samples = int(seconds * RATE)
    rows = []
    for row in range(batch):
        clip = clips[(step * batch + row) % len(clips)]
        rows.append(clip.repeat(math.ceil(samples / clip.numel()))[:samples])
    return torch.stack(rows)


def front_end(n_mels: int, device: torch.device) -> FrontEnd:
    """Fbank + sentence mean normalisation, as the recipes' common.yaml compose it."""
    features = Fbank(sample_rate=RATE, n_mels=n_mels, n_fft=400, win_length=25, hop_length=10)
    normalize = InputNormalization(norm_type="sentence", std_norm=False)
    return FrontEnd(features, normalize).to(device)


def recipe_model(recipe: str, kind: str, arch: str, **refs) -> dict:
    """The ``model`` (and ``tap_points``) a recipe's ``hparams/<kind>/<arch>.yaml`` builds,
    with ``refs`` the keys it takes from common.yaml (n_mels, n_classes, ...)."""
    prelude = "".join(f"{key}: {value}\n" for key, value in refs.items())
    text = (REPO / "recipes" / recipe / "hparams" / kind / f"{arch}.yaml").read_text()
    return load_hyperpyyaml(prelude + text)


def speaker_model(arch: str, sizes: Sizes, kind: str) -> torch.nn.Module:
    refs = {"n_mels": 80, "n_speakers": sizes.n_speakers, "aam_scale": 30.0}
    return recipe_model("speaker_verification", kind, arch, **refs)["model"]


def aam_loss() -> LogSoftmaxWrapper:
    """The speaker recipe's AAM softmax (margin 0.2, scale 30)."""
    return LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30.0))


def poisoned(wavs: torch.Tensor, poison: bool) -> torch.Tensor:
    """``wavs`` with a NaN in its first sample when ``poison`` (--inject_nonfinite)."""
    if poison:
        wavs = wavs.clone()
        wavs[0, 0] = float("nan")
    return wavs


# ----- the step groups: each yields one loss (or output) per step -------------------------------
@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    clips: list[torch.Tensor]
    steps: int
    workdir: Path


def train_steps(
    ctx: Context,
    precision: Precision,
    model: torch.nn.Module,
    batch_of: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    loss_of: Callable[[dict, torch.Tensor], torch.Tensor],
    poison: bool,
) -> Iterator[torch.Tensor]:
    """Adam steps of ``model`` on ``batch_of(step) -> (feats, targets)``; yields each loss."""
    model.to(ctx.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(ctx.steps):
        feats, targets = batch_of(step)
        if poison and step == 0:
            feats = feats.clone()
            feats[0, 0, 0] = float("nan")
        lens = torch.ones(feats.shape[0], device=ctx.device)
        with precision.autocast():
            loss = loss_of(model(feats, lens), targets)
        precision.step(loss, optimizer)
        yield loss.detach()


def labelled_batches(
    ctx: Context, batch: int, seconds: float, n_mels: int, n_targets: int, multi_label=False
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``step -> (feats (B, T, n_mels), targets)`` of real crops; targets cycle over classes."""
    features = front_end(n_mels, ctx.device)

    def batch_of(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        wavs = crop_batch(ctx.clips, step, batch, seconds).to(ctx.device)
        with torch.no_grad():
            feats = features(wavs, torch.ones(batch, device=ctx.device))
        classes = (torch.arange(batch, device=ctx.device) + step * batch) % n_targets
        if multi_label:
            return feats, F.one_hot(classes, n_targets).float()
        return feats, classes

    return batch_of


def speaker_teacher(ctx: Context, precision: Precision, poison: bool) -> Iterator:
    s = ctx.sizes
    model = speaker_model(s.speaker_teacher, s, "teacher")
    aam = aam_loss()
    batches = labelled_batches(ctx, s.speaker_batch, s.crop_s, 80, s.n_speakers)
    loss = lambda out, y: aam(out["cosine"].unsqueeze(1).float(), y.unsqueeze(1))  # noqa: E731
    return train_steps(ctx, precision, model, batches, loss, poison), s.speaker_batch


def tagger_teacher(ctx: Context, precision: Precision, poison: bool) -> Iterator:
    s = ctx.sizes
    refs = {"n_mels": 64, "n_outputs": s.n_tags, "teacher_width": s.tagger_width}
    model = recipe_model("audio_tagging", "teacher", s.tagger, **refs)["model"]
    batches = labelled_batches(ctx, s.tagger_batch, s.tagger_clip_s, 64, s.n_tags, True)
    loss = lambda out, y: F.binary_cross_entropy_with_logits(out["logits"].float(), y)  # noqa: E731
    return train_steps(ctx, precision, model, batches, loss, poison), s.tagger_batch


def classifier_model(ctx: Context) -> torch.nn.Module:
    refs = {"n_mels": 40, "n_classes": ctx.sizes.n_classes}
    kind, _, arch = ctx.sizes.classifier.rpartition("/")
    return recipe_model("sound_classification", kind or "teacher", arch, **refs)["model"]


def classifier_teacher(ctx: Context, precision: Precision, poison: bool) -> Iterator:
    s = ctx.sizes
    batches = labelled_batches(ctx, s.classifier_batch, s.classifier_clip_s, 40, s.n_classes)
    loss = lambda out, y: F.cross_entropy(out["logits"].float(), y)  # noqa: E731
    steps = train_steps(ctx, precision, classifier_model(ctx), batches, loss, poison)
    return steps, s.classifier_batch


def speaker_replay(ctx: Context) -> ViewReplay:
    """The speaker recipe's crops as a replayable policy: two seeded crop_s views a segment."""
    policy = AugmentPolicy(random_crop=True, crop_samples=int(ctx.sizes.crop_s * RATE))
    return ViewReplay(policy, front_end(80, ctx.device), seed=1, n_views=2)


def segment_ids(ctx: Context, n: int) -> tuple[list[str], Callable[[str], torch.Tensor]]:
    """``n`` training-segment ids over the real clips (each at least 2 crops long) and their
    loader ``id -> (S,)``."""
    samples = int(2 * ctx.sizes.crop_s * RATE)

    def load(utt: str) -> torch.Tensor:
        clip = ctx.clips[int(utt.split("-")[1]) % len(ctx.clips)]
        return clip.repeat(math.ceil(samples / clip.numel()))[:samples]

    return [f"seg-{i:05d}" for i in range(n)], load


def speaker_kd_from_cache(ctx: Context, precision: Precision, poison: bool) -> Iterator:
    """Build (untimed, fp32) the logit cache of the C = 1024 teacher over the segments one
    epoch of ``steps`` batches reads, then train the C = 512 student on replayed crops."""
    s = ctx.sizes
    replay = speaker_replay(ctx)
    ids, load = segment_ids(ctx, s.speaker_batch * ctx.steps)
    teacher = Teacher(speaker_model(s.speaker_teacher, s, "teacher").to(ctx.device))
    folder = ctx.workdir / "cache"  # built once, read by every precision
    build_teacher_cache(
        teacher, ids, load, lambda batch: replay.features(batch, ctx.device), replay.make_view,
        folder, settings={"check": "gpu_check"}, n_views=replay.n_views,
        batch_size=s.speaker_batch, progress=_no_bar,
    )  # fmt: skip
    cache = TeacherCache(folder)
    labels = {utt: i % s.n_speakers for i, utt in enumerate(ids)}
    features, crop, aam, kd = replay.front_end, replay.policy.crop, aam_loss(), HintonKD(tau=4.0)
    stored = {}

    def batch_of(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = ids[step * s.speaker_batch : (step + 1) * s.speaker_batch]
        views = [cache.read(utt, view=step) for utt in rows]
        wavs = torch.stack([crop(load(u), int(p[0])) for u, (_, p) in zip(rows, views)])
        stored["logits"] = torch.stack([out["logits"] for out, _ in views]).to(ctx.device)
        wavs = wavs.to(ctx.device)
        with torch.no_grad():
            feats = features(wavs, torch.ones(len(rows), device=ctx.device))
        return feats, torch.tensor([labels[u] for u in rows], device=ctx.device)

    def loss(out: dict, y: torch.Tensor) -> torch.Tensor:
        task = aam(out["cosine"].unsqueeze(1).float(), y.unsqueeze(1))
        return task + kd(out, {"logits": stored["logits"]})

    student = speaker_model(s.speaker_student, s, "student")
    return train_steps(ctx, precision, student, batch_of, loss, poison), s.speaker_batch


def imlkd_cache(ctx: Context, precision: Precision, poison: bool) -> Iterator:
    """Stage 3 of IML-KD: build_teacher_cache with the IntegratedTeacher (IG maps at 0.5, 1
    and 2 s of the true speaker's cosine), a tenth of the steps in cache batches (each batch is
    some 10 segments x ig_steps passes of the teacher a view); yields each batch's outputs
    (their finiteness is the check) as the build makes them."""
    s = ctx.sizes
    replay = speaker_replay(ctx)
    batches = max(2, ctx.steps // 10)
    ids, load = segment_ids(ctx, s.speaker_batch * batches // replay.n_views)
    model = speaker_model(s.speaker_teacher, s, "teacher").to(ctx.device)
    integrated = IntegratedInput(durations_s=(0.5, 1.0, 2.0), steps=s.ig_steps)
    teacher = IntegratedTeacher(Teacher(model), integrated)
    labels = {utt: i % s.n_speakers for i, utt in enumerate(ids)}

    def build(emit: Callable[[torch.Tensor], None]) -> None:
        def views(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
            feats, params = replay.features(batch, ctx.device)
            if poison:
                feats = feats.clone()
                feats[0, 0, 0] = float("nan")
            return feats, params

        def call(feats: torch.Tensor, lens: torch.Tensor, targets: torch.Tensor) -> dict:
            with precision.autocast():
                out = teacher(feats, lens, targets)
            emit(torch.stack([out["ig_weight"].float().sum(), out["logits"].float().sum()]))
            return out

        build_teacher_cache(
            call, ids, load, views, replay.make_view, ctx.workdir / f"imlkd-{precision.name}",
            settings={"check": "gpu_check"}, n_views=replay.n_views, batch_size=s.speaker_batch,
            progress=_no_bar, targets=lambda rows: torch.tensor([labels[u] for u in rows]),
        )  # fmt: skip

    return as_steps(build), s.speaker_batch


def frami_synthesis(ctx: Context, precision: Precision, poison: bool) -> Iterator:
    """FRAMI on the classifier teacher: a one-step warm-up batch, then one batch of ``steps``
    Adam steps; yields each step's total loss (the synthesiser's history) once it is done."""
    s = ctx.sizes
    teacher = classifier_model(ctx).to(ctx.device).eval()
    targets = torch.arange(s.frami_batch) % s.n_classes

    def synthesise(steps: int) -> list[torch.Tensor]:
        frami = FRAMI(
            teacher, 40, s.n_classes, steps=steps, device=ctx.device, precision=precision.name,
            lambda_bn=0.0005, init_std=float("nan") if poison else 5.0, fuse_views=True,
        )  # fmt: skip
        frami.synthesize(targets, s.frami_frames)
        return [torch.tensor(sum(terms)) for terms in zip(*frami.history.values())]

    def losses() -> Iterator[torch.Tensor]:
        yield from synthesise(1)
        yield from synthesise(ctx.steps - 1)

    return losses(), s.frami_batch


def as_steps(work: Callable[[Callable[[torch.Tensor], None]], None]) -> Iterator[torch.Tensor]:
    """Run ``work(emit)`` on a thread and yield what it emits, as it emits it (code that calls
    back, such as build_teacher_cache, as a step iterator); its exception is raised here."""
    items: queue.Queue = queue.Queue()
    done = object()

    def target() -> None:
        try:
            work(items.put)
        except Exception as error:  # handed to the consumer
            items.put(error)
        items.put(done)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while (item := items.get()) is not done:
        if isinstance(item, Exception):
            raise item
        yield item
    thread.join()


class _NoBar:
    """A progress bar that shows nothing (the check prints its own table)."""

    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _no_bar(**kwargs) -> _NoBar:
    return _NoBar()


RUNNERS = dict(zip(GROUPS, (speaker_teacher, tagger_teacher, classifier_teacher,
                            speaker_kd_from_cache, imlkd_cache, frami_synthesis)))  # fmt: skip


# ----- running and reporting ---------------------------------------------------------------------
def run_group(ctx: Context, precision_name: str, group: str, poison: bool) -> GroupResult:
    """Run one group (a fresh gradient scaler); its throughput counts the steps after the first
    (warm-up). More than half of the optimiser steps skipped by the fp16 scaler (gradients not
    finite) fails it as a non-finite loss does."""
    precision = Precision(precision_name, ctx.device)
    result = GroupResult(precision.name, group)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    sampler = BusySampler(ctx.device) if ctx.device.type == "cuda" else None
    try:
        with sampler or nullcontext():
            start, stamps, finite = time.perf_counter(), [], []
            losses, per_step = RUNNERS[group](ctx, precision, poison)
            for loss in losses:
                finite.append(bool(torch.isfinite(loss).all()))
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                stamps.append(time.perf_counter())
        timed = len(stamps) - 1
        elapsed = stamps[-1] - stamps[0] if timed > 0 else stamps[-1] - start
        result.samples_per_s = per_step * max(timed, 1) / max(elapsed, 1e-9)
        result.finite = bool(finite) and all(finite)
        if precision.scaler.is_enabled() and precision.steps:
            result.skipped = f"{precision.skipped}/{precision.steps}"
            if precision.skipped > precision.steps / 2:
                result.finite = False
                result.error = f"the fp16 scaler skipped {result.skipped} steps (gradients)"
    except FloatingPointError as error:  # the library's own stop on a non-finite term (FRAMI)
        result.finite, result.error = False, str(error).splitlines()[0]
    except Exception as error:  # a failing group is reported, the others still run
        result.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    result.busy_pct = sampler.busy_pct if sampler is not None else None
    result.peak_mib = peak_mib(ctx.device)
    return result


def table_line(result: GroupResult) -> str:
    busy = "n/a" if result.busy_pct is None else f"{result.busy_pct:.0f}"
    if not result.finite:
        status = "NON-FINITE" + (f": {result.error}" if result.error else "")
    else:
        status = f"FAILED: {result.error}" if result.error else "ok"
    return (
        f"| {result.precision} | {result.group} | {result.samples_per_s:.1f} | {busy} | "
        f"{result.peak_mib:.0f} | {'yes' if result.finite and not result.error else 'no'} | "
        f"{result.skipped} | {status} |"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (tiny sizes)")
    parser.add_argument("--steps", type=int, help="steps a group (default: 200 on CUDA, 2 on CPU)")
    parser.add_argument(
        "--sizes", choices=("realistic", "tiny"), help="default: realistic on CUDA, tiny on CPU"
    )
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS))
    parser.add_argument("--inject_nonfinite", choices=GROUPS, help="a NaN in this group's input")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is the warm-up)")
    return args


def main(argv: list[str] | None = None) -> int:
    """The check as the command line asks; the exit status. The caller's torch threads and
    random state are restored (the tests call it in their own process)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device} but torch sees no CUDA device", file=sys.stderr)
        return 1
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CI machine's cores are shared
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            return run_check(args, device)
    finally:
        torch.set_num_threads(threads)


def run_check(args: argparse.Namespace, device: torch.device) -> int:
    """Print the table of every precision and group; 1 when any group failed, else 0."""
    tiny = args.sizes == "tiny" or (args.sizes is None and device.type == "cpu")
    sizes = TINY if tiny else REALISTIC
    steps = args.steps or (2 if device.type == "cpu" else 200)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {name}: {steps} steps a group, {'tiny' if sizes is TINY else 'realistic'}")
    print(
        "| precision | group | samples/s | GPU busy % | peak MiB | finite | scaler skips | status |"
    )
    print("|---|---|---|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as workdir:
        ctx = Context(device, sizes, real_clips(), steps, Path(workdir))
        for precision_name in args.precisions:
            precision = Precision(precision_name, device)
            reason = unsupported_reason(precision)
            if reason:
                skipped = f"skipped on {name}: {reason}"
                print(f"| {precision_name} | (all) | – | – | – | – | – | {skipped} |")
                continue
            for group in args.groups:
                result = run_group(ctx, precision_name, group, group == args.inject_nonfinite)
                print(table_line(result), flush=True)
                results.append(result)
    failed = [r for r in results if not r.ok]
    print(f"gpu_check: {len(results) - len(failed)} of {len(results)} groups passed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
