"""kd_modules.dataio: reading, down-mixing, resampling, errors, conversion, the skip-bad loader."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.lobes.features import Fbank

from kd_modules.dataio import (
    AudioReadError,
    SkipBadCollate,
    _temp_sibling,
    audio_info,
    audio_pipeline,
    convert_audio,
    read_audio,
    read_json,
    remove_stale_temp_files,
    resolve_audio_path,
    sox_available,
    verify_audio,
    write_json_atomic,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CLIP = SAMPLES / "esc50" / "ESC-50-master" / "audio" / "4-183992-A-0.flac"  # 5 s, 16 kHz


@pytest.fixture
def wav_clip(tmp_path):
    """The FLAC clip re-encoded as 16-bit WAV."""
    path = tmp_path / "clip.wav"
    data, rate = soundfile.read(CLIP, dtype="int16")
    soundfile.write(path, data, rate, subtype="PCM_16")
    return path


def test_read_flac_and_wav_agree(wav_clip):
    flac = read_audio(CLIP)
    wav = read_audio(wav_clip)
    assert flac.dtype == torch.float32 and flac.ndim == 1 and flac.numel() == 80000
    assert torch.allclose(flac, wav)
    info = audio_info(wav_clip)
    assert (info.sample_rate, info.num_frames, info.channels) == (16000, 80000, 1)
    assert info.duration == pytest.approx(5.0)


def test_stereo_is_averaged(tmp_path):
    mono = read_audio(CLIP).numpy()
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([mono, 0.5 * mono], axis=1), 16000, subtype="FLOAT")
    assert torch.allclose(read_audio(path), torch.from_numpy(0.75 * mono), atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampling_scales_length(rate):
    assert read_audio(CLIP, rate).numel() == pytest.approx(80000 * rate / 16000, abs=1)
    assert read_audio(CLIP, 16000).numel() == 80000


@pytest.mark.parametrize(
    "content, reason",
    [(None, "not found"), (b"", "empty"), (b"RIFF garbage, not audio" * 20, "corrupt")],
)
def test_bad_files_raise_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad_clip.wav"
    if content is not None:
        path.write_bytes(content)
    for read in (read_audio, audio_info):
        with pytest.raises(AudioReadError, match=reason) as err:
            read(path)
        assert err.value.path == str(path) and "bad_clip.wav" in str(err.value)


def test_zero_sample_file_raises(tmp_path):
    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros(0, dtype="float32"), 16000)
    with pytest.raises(AudioReadError, match="no samples"):
        audio_info(path)
    with pytest.raises(AudioReadError, match="no samples"):
        read_audio(path)


def test_error_survives_pickling():
    err = pickle.loads(pickle.dumps(AudioReadError("/x/a.wav", "empty file")))
    assert err.path == "/x/a.wav" and "empty file" in str(err)


def test_resolve_audio_path_swaps_extension(tmp_path, wav_clip):
    assert resolve_audio_path(CLIP) == CLIP
    assert resolve_audio_path(CLIP.with_suffix(".wav")) == CLIP
    assert resolve_audio_path(wav_clip.with_suffix(".flac")) == wav_clip
    assert resolve_audio_path(tmp_path / "absent.wav") is None


def _converted(tmp_path, backend, name):
    dst = tmp_path / "out" / name
    assert convert_audio(CLIP, dst, 8000, backend) == backend
    return dst


@pytest.mark.parametrize("name", ["a.wav", "a.flac"])
def test_convert_soundfile_and_sox_agree(tmp_path, name):
    if not sox_available():
        pytest.skip("SoX binary or sox package not available")
    by_sf = _converted(tmp_path / "sf", "soundfile", name)
    by_sox = _converted(tmp_path / "sox", "sox", name)
    for path in (by_sf, by_sox):
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
    a, b = read_audio(by_sf), read_audio(by_sox)
    assert abs(a.numel() - b.numel()) <= 1
    n = min(a.numel(), b.numel())
    assert torch.corrcoef(torch.stack([a[:n], b[:n]]))[0, 1] > 0.99
    assert sorted(p.name for p in by_sox.parent.iterdir()) == [name]  # no temp file left


def test_convert_soundfile_downmixes_stereo(tmp_path):
    src = tmp_path / "stereo.wav"
    mono = read_audio(CLIP, 44100).numpy()
    soundfile.write(src, np.stack([mono, mono], axis=1), 44100)
    dst = tmp_path / "mono.wav"
    convert_audio(src, dst, 16000, "soundfile")
    info = audio_info(dst)
    assert (info.sample_rate, info.channels) == (16000, 1)
    assert info.num_frames == pytest.approx(80000, abs=2)


def test_convert_unreadable_source_raises_and_writes_nothing(tmp_path):
    src = tmp_path / "bad.wav"
    src.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(AudioReadError, match="bad.wav"):
        convert_audio(src, tmp_path / "out" / "bad.wav", 16000, "auto")
    assert not list(tmp_path.glob("out/*"))


def test_write_json_atomic_roundtrip_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json_atomic(path, {"a": [1, 2], "é": 1.5})
    write_json_atomic(path, {"b": 2})
    assert read_json(path) == {"b": 2}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def _loader(tmp_path, bad_ids, batch_size):
    """A DataLoader over real clips where ``bad_ids`` point at a corrupt file."""
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all" * 10)
    clips = sorted((SAMPLES / "esc50" / "ESC-50-master" / "audio").glob("*.flac"))[:5]
    data = {
        f"utt{i}": {"wav": str(corrupt if f"utt{i}" in bad_ids else c)} for i, c in enumerate(clips)
    }
    dataset = DynamicItemDataset(data)
    dataset.add_dynamic_item(audio_pipeline(8000))
    dataset.set_output_keys(["id", "sig"])
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=SkipBadCollate())


def test_pipeline_and_collate_skip_a_corrupt_clip(tmp_path):
    batches = list(_loader(tmp_path, {"utt1"}, batch_size=2))
    ids = [i for b in batches for i in b.id]
    assert ids == ["utt0", "utt2", "utt3", "utt4"]
    assert sum(b.skipped for b in batches) == 1
    assert [b.skipped_ids for b in batches] == [["utt1"], [], []]
    assert batches[0].sig.data.shape == (1, 40000)


def test_collate_makes_a_zero_placeholder_when_every_example_is_bad(tmp_path):
    batches = list(_loader(tmp_path, {"utt0", "utt1"}, batch_size=2))
    placeholder = batches[0]
    assert placeholder.placeholder and placeholder.id == ["utt0", "utt1"]
    assert (placeholder.skipped, placeholder.skipped_ids) == (2, ["utt0", "utt1"])
    assert placeholder.sig.data.shape == (2, 16000) and not placeholder.sig.data.any()
    assert [(b.id, b.placeholder) for b in batches[1:]] == [
        (["utt2", "utt3"], False),
        (["utt4"], False),
    ]


def test_collate_pads_channels_first_outputs_of_views_of_different_lengths():
    """A cached ECAPA tap is (C, T): two crops of 1.0 s and 0.7 s of a real clip batch into
    (2, C, T_max), zero-padded in time, while the signals batch as SpeechBrain's own padding does
    (batch_pad_right refuses this batch: it pads only the first dimension)."""
    clip = read_audio(CLIP, 16000)
    crops = [clip[:16000], clip[16000:27200]]
    fbank = Fbank(n_mels=24)
    frames = [fbank(crop[None])[0].T for crop in crops]  # (24, 101) and (24, 71)
    examples = [
        {"id": f"v{i}", "sig": c, "teacher_frames": f}
        for i, (c, f) in enumerate(zip(crops, frames))
    ]
    with pytest.raises(OSError, match="same dimensions except for the first"):
        PaddedBatch(examples)
    batch = SkipBadCollate()(examples)
    assert batch.teacher_frames.data.shape == (2, 24, 101)
    assert torch.equal(batch.teacher_frames.data[1, :, :71], frames[1])
    assert not batch.teacher_frames.data[1, :, 71:].any()
    signals = PaddedBatch([{k: v for k, v in ex.items() if k == "sig"} for ex in examples]).sig
    assert torch.equal(batch.sig.data, signals.data) and torch.equal(
        batch.sig.lengths, signals.lengths
    )


# --- truncated FLAC and stale conversion temp files -----------------------------------------


@pytest.fixture
def truncated_flac(tmp_path):
    """The real 5 s FLAC cut to half its bytes: a valid header, frames missing."""
    path = tmp_path / "truncated.flac"
    path.write_bytes(CLIP.read_bytes()[: CLIP.stat().st_size // 2])
    return path


def test_verify_audio_decodes_every_frame(truncated_flac):
    assert audio_info(truncated_flac).duration == 5.0
    with pytest.raises(AudioReadError, match="truncated.flac: corrupt or unreadable audio"):
        verify_audio(truncated_flac)
    assert verify_audio(CLIP) == audio_info(CLIP)


def test_convert_with_sox_rejects_a_truncated_flac(tmp_path, truncated_flac):
    if not sox_available():
        pytest.skip("SoX binary or sox package not available")
    out = tmp_path / "out"
    message = r"truncated\.flac: truncated or corrupt: the header says 5\.000 s but only 2\.\d{3} s"
    with pytest.raises(AudioReadError, match=message):
        convert_audio(truncated_flac, out / "clip.wav", 16000, "sox")
    assert not list(out.iterdir())  # neither the output nor its temporary file


def test_remove_stale_temp_files_removes_only_conversion_leftovers(tmp_path):
    stale = [_temp_sibling(tmp_path / "a.wav"), _temp_sibling(tmp_path / "sub" / "b.flac")]
    kept = [tmp_path / "a.wav", tmp_path / ".hidden.wav", tmp_path / "sub" / ".m.json.x1y2.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_atomic_writes_give_the_permissions_of_a_new_file(tmp_path):
    """Not mkstemp's 0600: a results.json must be readable like any file its owner writes."""
    from kd_modules import dataio

    dataio.write_json_atomic(tmp_path / "results.json", {"a": 1})
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o666 & ~dataio._UMASK
