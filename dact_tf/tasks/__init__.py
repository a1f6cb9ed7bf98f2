"""Tasks: a backbone, a preprocessor and DACT in one Keras model, trained with
`fit`, calibrated with `calibrate` and loaded with `from_preset` (the keras-hub
Task pattern)."""

from dact_tf.tasks.text_classifier import DactTextClassifier
