"""The recipes' "use it without the toolkit" snippets: onnxruntime, soundfile and numpy only.

Each recipe README shows its task's snippet as it is here, and a test runs exactly this text in
an interpreter that never imports torch, next to ``model.onnx`` and ``export.json``.
"""

from __future__ import annotations

_READ = """import json
import numpy as np, onnxruntime, soundfile
wav, rate = soundfile.read("clip.wav", dtype="float32", always_2d=True)
assert rate == 16000, "the model takes 16 kHz audio: resample it first"
wav = wav.mean(axis=1)  # mono
session = onnxruntime.InferenceSession("model.onnx")
output = session.run(None, {"wavs": wav[None], "lengths": np.array([len(wav)])})[0][0]
"""

_SHOW = {
    "sound_classification": """labels = json.load(open("export.json"))["columns"]
print(labels[output.argmax()], f"{output.max():.3f}")  # the class and its probability
""",
    "audio_tagging": """labels = json.load(open("export.json"))["columns"]
for tag in output.argsort()[::-1][:5]:
    print(labels[tag], f"{output[tag]:.3f}")  # the five highest tag scores
""",
    "speaker_verification": """print(json.dumps(output.tolist()))  # score two embeddings by cosine
""",
}


def snippet(task: str) -> str:
    """The README snippet of ``task``: read ``clip.wav``, run ``model.onnx``, print the result."""
    if task not in _SHOW:
        raise ValueError(f"no snippet for task {task!r}; tasks: {sorted(_SHOW)}")
    return _READ + _SHOW[task]
