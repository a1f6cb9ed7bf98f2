"""DACT math as pure TensorFlow ops."""

from dact_tf.ops.dact_ops import HALTING_RULES
from dact_tf.ops.dact_ops import PONDER_COSTS
from dact_tf.ops.dact_ops import TASKS
from dact_tf.ops.dact_ops import accumulate
from dact_tf.ops.dact_ops import distillation_loss
from dact_tf.ops.dact_ops import expected_blocks
from dact_tf.ops.dact_ops import first_halting_layer
from dact_tf.ops.dact_ops import initial_state
from dact_tf.ops.dact_ops import ponder_cost
from dact_tf.ops.dact_ops import remaining_weight_bound
from dact_tf.ops.dact_ops import should_halt
