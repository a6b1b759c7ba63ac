"""Architectures shared by recipes. Every model returns a dict of named outputs."""

from kd_modules.models.classifier import EmbeddingClassifier

__all__ = ["EmbeddingClassifier"]
