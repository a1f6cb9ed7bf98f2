"""DACT models."""

from dact_tf.models.dact_classifier import DactClassifier
