"""Callbacks for training DACT models with `model.fit`."""

from dact_tf.callbacks.best_epoch import KeepBestEpoch
from dact_tf.callbacks.ponder_logger import PonderCostLogger
from dact_tf.callbacks.ponder_logger import exit_summary
from dact_tf.callbacks.ponder_logger import halting_statistics
from dact_tf.callbacks.tau_scheduler import ConstantTau
from dact_tf.callbacks.tau_scheduler import LinearTauWarmup
from dact_tf.callbacks.tau_scheduler import TargetBlocksTau
from dact_tf.callbacks.tau_scheduler import TauScheduler
