"""SpeechBrain Brains: DistillBrain (teacher plumbing) and the task brains built on it."""

from kd_modules.brains.classification import ClassificationBrain
from kd_modules.brains.datafree import DataFreeBrain
from kd_modules.brains.distill import DistillBrain, KDObjective
from kd_modules.brains.speaker import SpeakerBrain
from kd_modules.brains.tagging import TaggingBrain, TagLayout

__all__ = [
    "ClassificationBrain",
    "DataFreeBrain",
    "DistillBrain",
    "KDObjective",
    "SpeakerBrain",
    "TagLayout",
    "TaggingBrain",
]
