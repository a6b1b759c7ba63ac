"""kd_modules: knowledge distillation for audio, on SpeechBrain (task-agnostic library)."""

import logging


class _NoTorchvisionWarning(logging.Filter):
    """Drop SpeechBrain's "torchvision is not available - cannot save figures" warning.

    ``speechbrain.utils.train_logger`` looks torchvision up at import time, for the image saver
    of its ``ProgressSampleLogger`` (samples of generative models), and warns when it is missing;
    every recipe imports that module for ``FileTrainLogger``. Nothing here uses that saver: the
    training curves are drawn with matplotlib (``kd_modules.curves.plot_history``). Installed
    here, before any recipe YAML imports the module, so the warning never reaches a log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not available")


logging.getLogger("speechbrain.utils.train_logger").addFilter(_NoTorchvisionWarning())
