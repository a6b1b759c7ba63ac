"""Architectures shared by recipes. Every model returns a dict of named outputs."""

from kd_modules.models.classifier import EmbeddingClassifier
from kd_modules.models.pooling import FiniteStatisticsPooling, use_finite_statistics_pooling

__all__ = ["EmbeddingClassifier", "FiniteStatisticsPooling", "use_finite_statistics_pooling"]
