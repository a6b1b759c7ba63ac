"""SpeechBrain Brains: DistillBrain (the teacher contract), TaskBrain (what every task shares) and
the task brains built on them; ``stage_log`` (terms, history) and ``ddp`` (DDP set-up,
placeholder batches) are their components."""

from kd_modules.brains.classification import ClassificationBrain
from kd_modules.brains.datafree import DataFreeBrain
from kd_modules.brains.distill import DistillBrain, KDObjective
from kd_modules.brains.speaker import SpeakerBrain
from kd_modules.brains.tagging import TaggingBrain, TagLayout
from kd_modules.brains.task import TaskBrain
from kd_modules.brains.unlabelled import UnlabelledSpeakerBrain

__all__ = [
    "ClassificationBrain",
    "DataFreeBrain",
    "DistillBrain",
    "KDObjective",
    "SpeakerBrain",
    "TagLayout",
    "TaggingBrain",
    "TaskBrain",
    "UnlabelledSpeakerBrain",
]
