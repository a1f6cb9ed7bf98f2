"""Tasks: a backbone, a preprocessor and DACT in one Keras model, trained with
`fit`, calibrated with `calibrate` and loaded with `from_preset` (the keras-hub
Task pattern); one Task class per encoder family (`family_tasks`)."""

from dact_tf.tasks.text_classifier import DactTextClassifier
from dact_tf.tasks import family_tasks  # noqa: F401  (registers the families' Task classes)
