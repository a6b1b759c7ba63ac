"""Ship a trained model: TorchScript and ONNX files that take raw 16 kHz waveforms.

- :mod:`~kd_modules.export.frontend`: the recipes' SpeechBrain features as an exportable module;
- :mod:`~kd_modules.export.wrapper`: waveforms + lengths -> the recipe's outputs, deterministic;
- :mod:`~kd_modules.export.compat`: tracing-safe stand-ins for two SpeechBrain idioms;
- :mod:`~kd_modules.export.formats`: TorchScript and ONNX writers;
- :mod:`~kd_modules.export.quantize`: static int8 ONNX, calibrated on training clips;
- :mod:`~kd_modules.export.parity`: exported vs PyTorch outputs, batched and alone;
- :mod:`~kd_modules.export.runtime` / :mod:`~kd_modules.export.latency`: run and time them;
- :mod:`~kd_modules.export.manifest`: export.json; :mod:`~kd_modules.export.run`: one run.
"""

from kd_modules.export.frontend import DeployableFrontEnd, UnsupportedFrontEnd
from kd_modules.export.parity import ParityError, check_parity
from kd_modules.export.run import export_run
from kd_modules.export.wrapper import DeployedModel, RecipePipeline

__all__ = [
    "DeployableFrontEnd",
    "DeployedModel",
    "ParityError",
    "RecipePipeline",
    "UnsupportedFrontEnd",
    "check_parity",
    "export_run",
]
