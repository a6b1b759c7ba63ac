"""The one place audio is read, down-mixed, resampled, converted and manifests are written.

Everything reads audio through :func:`read_audio` (soundfile + ``torchaudio.functional.resample``),
so a bad file always fails the same way: :class:`AudioReadError`, naming the file and what is
wrong. Training never crashes on such a file: :func:`audio_pipeline` turns it into an empty
signal and :class:`SkipBadCollate` drops it from the batch and counts it (a batch of only bad
clips becomes a zero placeholder whose loss the Brain zeroes, so DDP ranks stay in step).
Nothing here knows a dataset.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile
import torch
import torchaudio.functional
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.data_utils import pad_right_to

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac")
_PCM16_MAX = 1.0 - 1.0 / 32768


class AudioReadError(RuntimeError):
    """An audio file is missing, empty, corrupt or has no samples; ``.path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read audio file {self.path}: {reason}")

    def __reduce__(self):
        # Keeps the exception picklable across multiprocessing workers.
        return (AudioReadError, (self.path, self.reason))


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file."""

    sample_rate: int
    num_frames: int
    channels: int
    duration: float


def _check_file(path: Path) -> None:
    """Raise AudioReadError when the file is missing or empty (before libsndfile sees it)."""
    if not path.is_file():
        raise AudioReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioReadError(path, "empty file (0 bytes)")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of ``path``; raise AudioReadError if it is unreadable or has 0 frames."""
    path = Path(path)
    _check_file(path)
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.SoundFileError) as err:
        raise AudioReadError(path, f"corrupt or unreadable audio ({err})") from err
    if info.frames <= 0:
        raise AudioReadError(path, "no samples (0 frames)")
    return AudioInfo(info.samplerate, info.frames, info.channels, info.frames / info.samplerate)


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Return the file as a float32 mono waveform ``(samples,)``, resampled to ``sample_rate``.

    Channels are averaged; ``sample_rate=None`` keeps the file's rate. ``start``/``stop`` cut a
    segment, in samples at the output rate: a file already at that rate is read from ``start``
    to ``stop`` only (a 3 s training segment of a 20 s utterance reads 3 s), any other is read
    whole, resampled, then cut.
    """
    path = Path(path)
    _check_file(path)
    try:
        file_rate = soundfile.info(str(path)).samplerate
        direct = sample_rate is None or sample_rate == file_rate
        window = {"start": start, "stop": stop} if direct else {}
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True, **window)
    except (RuntimeError, soundfile.SoundFileError) as err:
        raise AudioReadError(path, f"corrupt or unreadable audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioReadError(path, "no samples (0 frames)")
    wav = torch.from_numpy(data.mean(axis=1))
    if not direct:
        wav = torchaudio.functional.resample(wav, file_rate, sample_rate)[start:stop]
    return wav


def verify_audio(path: str | os.PathLike) -> AudioInfo:
    """Decode every frame of ``path`` once and return its header facts.

    A truncated FLAC keeps a valid header, so :func:`audio_info` accepts it; only decoding the
    frames finds the damage (AudioReadError, as :func:`read_audio` raises).
    """
    info = audio_info(path)
    read_audio(path)
    return info


def resolve_audio_path(path: str | os.PathLike) -> Path | None:
    """Return ``path`` if it exists, else the same stem with another audio extension, else None.

    Copies of datasets often ship ``.flac`` where the metadata says ``.wav`` (and vice versa).
    """
    path = Path(path)
    if path.is_file():
        return path
    for ext in AUDIO_EXTENSIONS:
        candidate = path.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return None


def sox_available() -> bool:
    """True when the ``sox`` Python package is installed and the SoX binary is on PATH."""
    return importlib.util.find_spec("sox") is not None and shutil.which("sox") is not None


def _import_sox():
    """Import ``sox`` only when needed: importing it logs a warning if the binary is missing."""
    import sox

    logging.getLogger("sox").setLevel(logging.WARNING)  # it logs every file it writes at INFO
    return sox


_TEMP_NAME = re.compile(
    r"^\..+\.[0-9a-f]{8}\.tmp(" + "|".join(map(re.escape, AUDIO_EXTENSIONS)) + ")$", re.I
)


def _temp_sibling(dst: Path) -> Path:
    """A not-yet-existing temporary name next to ``dst`` with the same extension."""
    return dst.with_name(f".{dst.stem}.{uuid.uuid4().hex[:8]}.tmp{dst.suffix}")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden ``.<stem>.<8 hex>.tmp.<ext>`` files under ``folder``; return them.

    :func:`convert_audio` writes such a file and renames it; a process killed in between leaves
    it behind. Call this before converting into ``folder``, never while another process does.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(".*.tmp.*") if p.is_file() and _TEMP_NAME.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _convert_with_sox(src: Path, tmp: Path, sample_rate: int, info: AudioInfo) -> None:
    """Convert with SoX, which decodes a truncated FLAC up to the damage without failing, so the
    output's length is checked against the source header's (SoX rounds to within one sample)."""
    sox = _import_sox()
    tfm = sox.Transformer()
    tfm.set_input_format(channels=info.channels)  # spares a soxi call per file
    tfm.set_output_format(file_type=tmp.suffix[1:], rate=sample_rate, bits=16, channels=1)
    try:
        tfm.build_file(str(src), str(tmp))
    except (sox.SoxError, OSError) as err:
        raise AudioReadError(src, f"SoX could not convert it ({err})") from err
    expected = info.num_frames * sample_rate / info.sample_rate
    decoded = soundfile.info(str(tmp)).frames
    if decoded + 1 < expected:
        raise AudioReadError(
            src,
            f"truncated or corrupt: the header says {info.duration:.3f} s but only "
            f"{decoded / sample_rate:.3f} s decode",
        )


def _convert_with_soundfile(src: Path, tmp: Path, sample_rate: int) -> None:
    wav = read_audio(src, sample_rate).numpy()
    soundfile.write(str(tmp), np.clip(wav, -1.0, _PCM16_MAX), sample_rate, subtype="PCM_16")


def convert_audio(
    src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int, backend: str = "auto"
) -> str:
    """Write ``src`` to ``dst`` as mono 16-bit audio at ``sample_rate``; return the backend used.

    The format follows ``dst``'s extension (.wav or .flac). ``backend`` is "sox", "soundfile"
    (read_audio + soundfile.write) or "auto" (SoX when available). The file appears atomically.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix.lower() not in AUDIO_EXTENSIONS:
        raise ValueError(f"convert_audio writes {AUDIO_EXTENSIONS}, not {dst.name}")
    if backend == "auto":
        backend = "sox" if sox_available() else "soundfile"
    if backend == "sox" and not sox_available():
        raise RuntimeError("backend 'sox' needs the sox Python package and the SoX binary")
    if backend not in ("sox", "soundfile"):
        raise ValueError(f"unknown conversion backend {backend!r}")
    info = audio_info(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(dst)
    try:
        if backend == "sox":
            _convert_with_sox(src, tmp, sample_rate, info)
        else:
            _convert_with_soundfile(src, tmp, sample_rate)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return backend


def _process_umask() -> int:
    """The process's umask (read once, at import, before any thread writes files)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _process_umask()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half-written).

    The file gets the permissions of any new file (0666 less the umask), not mkstemp's 0600, so
    manifests and results stay readable by the group that shares an experiment folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename (never half-written)."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def audio_pipeline(
    sample_rate: int, max_duration_s: float | None = None
) -> Callable[[str], torch.Tensor]:
    """A DynamicItemDataset item ``wav -> sig`` that never raises on a bad file.

    A missing or corrupt file gives an empty tensor (and a warning naming it), so an epoch goes
    on; pair it with :class:`SkipBadCollate`, which drops such examples from the batch. With
    ``max_duration_s`` the signal is cut to its first seconds (deterministic, so a teacher cache
    stays valid).
    """
    max_samples = None if max_duration_s is None else int(max_duration_s * sample_rate)

    @takes("wav")
    @provides("sig")
    def read_sig(wav: str) -> torch.Tensor:
        try:
            return read_audio(wav, sample_rate)[:max_samples]
        except AudioReadError as err:
            logger.warning("skipping example: %s", err)
            return torch.zeros(0)

    return read_sig


def segment_pipeline(sample_rate: int) -> Callable[[str, int, int], torch.Tensor]:
    """A DynamicItemDataset item ``(wav, start, stop) -> sig``: one segment of a recording
    (manifests of fixed training segments, as SpeechBrain's VoxCeleb recipe writes them), read
    without reading the rest when the file is at ``sample_rate``. Never raises on a bad file:
    an empty tensor, as :func:`audio_pipeline`."""

    @takes("wav", "start", "stop")
    @provides("sig")
    def read_segment(wav: str, start: int, stop: int) -> torch.Tensor:
        try:
            return read_audio(wav, sample_rate, int(start), int(stop))
        except AudioReadError as err:
            logger.warning("skipping example: %s", err)
            return torch.zeros(0)

    return read_segment


def pad_every_dim(
    tensors: list[torch.Tensor], mode: str = "constant", value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors of one rank, right-padding every dimension to the batch's largest.

    SpeechBrain's ``batch_pad_right`` pads the first dimension only and refuses the rest; a cached
    channels-first teacher tap ``(C, T)`` of views of different lengths (segments shorter than the
    crop) differs in its last one. Returns ``(B, *max_shape)`` and each tensor's relative length
    along its first dimension, as ``batch_pad_right`` does (so 1-D signals and ``(T, F)`` features
    batch exactly as before).
    """
    if len({t.ndim for t in tensors}) > 1:
        raise IndexError("All tensors must have same number of dimensions")
    max_shape = [max(t.shape[dim] for t in tensors) for dim in range(tensors[0].ndim)]
    padded = [pad_right_to(t, max_shape, mode=mode, value=value) for t in tensors]
    return torch.stack([tensor for tensor, _ in padded]), torch.tensor(
        [float(valid[0]) for _, valid in padded]
    )


class SkipBadCollate:
    """collate_fn that drops examples whose ``sig`` is empty, then pads with PaddedBatch.

    Padding is :func:`pad_every_dim` unless ``padding_func`` is given: cached channels-first
    teacher outputs of views of different lengths batch too.

    Every batch records ``skipped`` (how many were dropped), ``skipped_ids`` and ``placeholder``.
    When every example of a batch is bad, the batch is a placeholder instead of nothing: the same
    examples (ids, labels) with ``placeholder_samples`` zeros as their signal, ``placeholder=True``.
    Under DDP every rank must run the same forward and backward collectives at every step, so no
    rank may skip a batch: a Brain runs its usual forward on the placeholder and multiplies its
    loss by 0 (:func:`kd_modules.brains.ddp.zero_loss`), counting nothing but the skipped clips.
    ``placeholder_samples`` (1 s at 16 kHz) only needs to be long enough for the front end and the
    model's receptive field.
    """

    def __init__(
        self,
        signal_key: str = "sig",
        id_key: str = "id",
        placeholder_samples: int = 16000,
        **padded_batch_kwargs,
    ):
        self.signal_key = signal_key
        self.id_key = id_key
        self.placeholder_samples = placeholder_samples
        self.padded_batch_kwargs = {"padding_func": pad_every_dim, **padded_batch_kwargs}

    def __call__(self, examples: list[dict]) -> PaddedBatch:
        good = [ex for ex in examples if ex[self.signal_key].numel() > 0]
        bad_ids = [ex.get(self.id_key) for ex in examples if ex[self.signal_key].numel() == 0]
        if bad_ids:
            logger.warning("dropped %d unreadable example(s): %s", len(bad_ids), bad_ids)
        placeholder = not good
        if placeholder:
            silence = torch.zeros(self.placeholder_samples)
            good = [{**ex, self.signal_key: silence} for ex in examples]  # the placeholder
        batch = PaddedBatch(good, **self.padded_batch_kwargs)
        batch.skipped = len(bad_ids)
        batch.skipped_ids = bad_ids
        batch.placeholder = placeholder
        return batch


def is_placeholder(batch) -> bool:
    """True for SkipBadCollate's stand-in for a batch whose clips were all unreadable."""
    return bool(getattr(batch, "placeholder", False))
