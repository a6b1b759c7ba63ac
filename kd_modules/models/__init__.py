"""Architectures shared by recipes. Every model returns a dict of named outputs."""

from kd_modules.models.classifier import EmbeddingClassifier
from kd_modules.models.ensemble import Ensemble, classification_loss
from kd_modules.models.ge2e import GE2E, GE2EFrontEnd, GE2EOnWaveforms
from kd_modules.models.hub import HubClassifier, HubEmbedding
from kd_modules.models.pooling import FiniteStatisticsPooling, use_finite_statistics_pooling
from kd_modules.models.speaker import SpeakerEmbeddingModel
from kd_modules.models.tagger import CNNTagger, ConvLSTMTagger

__all__ = [
    "CNNTagger",
    "ConvLSTMTagger",
    "EmbeddingClassifier",
    "Ensemble",
    "FiniteStatisticsPooling",
    "GE2E",
    "GE2EFrontEnd",
    "GE2EOnWaveforms",
    "HubClassifier",
    "HubEmbedding",
    "SpeakerEmbeddingModel",
    "classification_loss",
    "use_finite_statistics_pooling",
]
