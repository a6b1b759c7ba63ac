"""SpeechBrain's Checkpointer, made safe against a kill in the middle of a save.

SpeechBrain writes a checkpoint's ``CKPT.yaml`` first and its parameter files after it, so a
process killed during a save leaves a folder that lists as a checkpoint but holds a truncated
``model.ckpt``; resuming (or loading a teacher) then fails on a corrupt file, or worse, a run
resumes from it. Here a checkpoint counts only once a ``COMPLETE`` marker is written after every
file of it, and half-written ones are removed by the next save (made by the process that holds
the run folder's lock, so no other writer can be mid-save).
"""

from __future__ import annotations

import logging
import shutil

from speechbrain.utils import checkpoints as sb_checkpoints
from speechbrain.utils.distributed import ddp_barrier, if_main_process

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


class Checkpointer(sb_checkpoints.Checkpointer):
    """Drop-in ``speechbrain.utils.checkpoints.Checkpointer`` that never serves a partial save."""

    def save_checkpoint(self, meta=None, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Remove half-written checkpoints, save a new one, then mark it complete."""
        if if_main_process():
            self.remove_incomplete()
        checkpoint = super().save_checkpoint(meta or {}, end_of_epoch, name, verbosity)
        if checkpoint is not None:
            (checkpoint.path / COMPLETE).touch()
        # Every rank must see the marker before any of them lists checkpoints again (SpeechBrain
        # deletes old ones with one broadcast per checkpoint: ranks that disagree deadlock).
        ddp_barrier()
        return checkpoint

    def _list_checkpoint_dirs(self) -> list:
        """Checkpoint folders whose save finished (SpeechBrain lists, finds and deletes these)."""
        return [
            folder for folder in super()._list_checkpoint_dirs() if (folder / COMPLETE).is_file()
        ]

    def remove_incomplete(self) -> None:
        """Delete checkpoint folders a killed process left half-written."""
        if not self.checkpoints_dir.is_dir():
            return
        for folder in self.checkpoints_dir.glob(f"{sb_checkpoints.CKPT_PREFIX}*"):
            if folder.is_dir() and not (folder / COMPLETE).is_file():
                logger.warning("Removing %s: a checkpoint whose save was interrupted", folder)
                shutil.rmtree(folder)
