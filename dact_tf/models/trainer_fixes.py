"""Keras training-loop fixes `DactClassifier` needs, kept apart from the model.

Each works around one behaviour of Keras 3's TensorFlow trainer that the
early-exit model meets; each is covered by a test (`tests/distribute`,
`tests/models`).
"""

import contextlib

import tensorflow as tf


class TrainerFixes:
    """Mixin for a `keras.Model`: strategy-safe symbolic build, no XLA at inference.

    - Under a `tf.distribute` strategy Keras builds its metrics from the
      first batch averaged across replicas, which fails on a boolean
      `padding_mask`; the build takes one replica's batch instead.
    - `evaluate` and `predict` run the early-exit loop, whose shapes depend
      on the data: they are never XLA-compiled, whatever `jit_compile` says
      for training.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy Keras builds its metrics from the
        # first batch averaged across replicas, which fails on the boolean
        # `padding_mask` (AddN has no bool kernel). One replica's batch has
        # the same structure and shapes, which is all the build needs.
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is None or strategy is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v,
                next(it),
            )
            break
        return super()._maybe_symbolic_build(data_batch=data_batch)

    @contextlib.contextmanager
    def _without_jit(self):
        jit = self._jit_compile
        self._jit_compile = False
        try:
            yield
        finally:
            self._jit_compile = jit

    def make_test_function(self, force=False):
        # The early-exit loop has data-dependent shapes: never XLA.
        with self._without_jit():
            return super().make_test_function(force=force)

    def make_predict_function(self, force=False):
        with self._without_jit():
            return super().make_predict_function(force=force)
