"""DACT Keras layers."""

from dact_tf.layers.dact_encoder import DactEncoder
from dact_tf.layers.dact_heads import DactHeads
