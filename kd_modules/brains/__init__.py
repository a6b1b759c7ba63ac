"""SpeechBrain Brains: DistillBrain (teacher plumbing) and the task brains built on it."""

from kd_modules.brains.classification import ClassificationBrain
from kd_modules.brains.distill import DistillBrain, KDObjective

__all__ = ["ClassificationBrain", "DistillBrain", "KDObjective"]
