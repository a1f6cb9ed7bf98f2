"""Calibration: the halting-bias shift to a compute target (`halting_bias`), the
certificates (`certify`, with the statistics in `risk_bounds`) and the step that
training, `dact-tf calibrate` and `DactTextClassifier.calibrate` share
(`calibration_run`)."""

from dact_tf.calibration.halting_bias import DEFAULT_MAX_METRIC_DROP
from dact_tf.calibration.halting_bias import DEFAULT_TOLERANCE
from dact_tf.calibration.halting_bias import calibrate_halting_bias
from dact_tf.calibration.halting_bias import exit_layers_for_shift
from dact_tf.calibration.halting_bias import useless_leading_blocks
