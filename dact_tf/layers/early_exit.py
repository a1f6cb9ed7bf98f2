"""The two early-exit paths of `DactEncoder` at inference.

- `chain_forward`: a batch of one row. The blocks run as a chain of
  `tf.cond`s on "not stopped yet": no loop, no compaction, no block index.
- `loop_forward`: a batch of several rows. A `tf.while_loop` runs one block
  per iteration and compacts the batch as rows finish, so a finished row
  costs nothing afterwards.

Both call the encoder's exit criterion (`encoder.exit_criterion`) after
every block, in the same order, and give the same answers row by row.
`DactEncoder.adaptive_forward` picks one (statically when the batch size is
known, with a `tf.cond` on it otherwise).
"""

import tensorflow as tf

from dact_tf import ops


def run_block(encoder, index, x, padding_mask):
    """`encoder`'s block `index` (a scalar tensor) via a balanced tree of tf.cond."""

    def subtree(lo, hi):
        if hi - lo == 1:
            return lambda: encoder.blocks[lo](
                x, padding_mask=padding_mask, training=False
            )
        mid = (lo + hi) // 2
        return lambda: tf.cond(index < mid, subtree(lo, mid), subtree(mid, hi))

    return subtree(0, encoder.num_layers)()


def chain_forward(encoder, inputs, padding_mask, max_layers=None):
    """Early exit for a batch of one row: the blocks as a chain of `tf.cond`s.

    One row needs no compaction, no block index and no loop: block n
    runs directly under a `tf.cond` on "not stopped yet", and once the
    row stops every later `cond` passes its state through. At batch 1
    this saves, per block, the `tf.while_loop`'s machinery, the `tf.cond`
    tree that picks the block and the packing of the loop state. The
    answers are the loop's: the same heads and criterion steps, in the
    same order (for a batch of several rows every row would run until
    the last one stops: `loop_forward` is the path for those).
    """
    num_layers, c = encoder.num_layers, encoder.num_outputs
    criterion, context = encoder.exit_criterion, encoder.exit_context
    batch_size = tf.shape(inputs)[0]
    answer, _ = ops.initial_state(batch_size, c)
    carried = (inputs, answer, criterion.initial_state(batch_size, context),
               tf.constant(False), tf.constant(0, tf.int32), tf.constant(False))

    def step_block(n, hidden, answer, state, stopped, layers, exact):
        del stopped, layers, exact
        remaining = num_layers - 1 - n
        hidden = encoder.blocks[n](hidden, padding_mask=padding_mask, training=False)
        y, h = encoder.heads(encoder._pool(hidden, padding_mask), layer_index=n)
        answer, state, halts = criterion.step(y, h, answer, state, remaining, context)
        done = tf.logical_or(tf.reduce_all(halts), remaining <= 0)
        stop = exact = done
        if max_layers is not None:
            stop = tf.logical_or(done, n + 1 >= max_layers[0])
            exact = tf.logical_or(tf.reduce_all(criterion.proven(
                answer, state, remaining, context, halts)), remaining <= 0)
        return hidden, answer, state, stop, tf.constant(n + 1, tf.int32), exact

    for n in range(num_layers):
        if n == 0:
            carried = step_block(0, *carried)
            continue
        carried = tf.cond(
            carried[3],
            lambda carried=carried: carried,
            lambda n=n, carried=carried: step_block(n, *carried),
        )
    _, answer, state, _, layers, exact = carried
    result = encoder._outputs(answer, tf.fill([batch_size], layers),
                              criterion.ponder_cost(state, answer))
    if max_layers is not None:
        result["exact"] = tf.fill([batch_size], exact)
    return result

def loop_forward(encoder, inputs, padding_mask, halting, max_layers):
    """Early exit in a `tf.while_loop` that compacts the batch as rows finish.

    Loop state, named in one place. `hidden`, `mask`, `rows` (their original
    row numbers) and `carry` hold the active rows only; `carry` packs each
    row's answer `[:c]`, the exit criterion's state columns (one per name in
    its `state_fields`; for DACT the budget and the ponder cost) and, under
    a cap, the cap. `out` holds finished rows' answer `[:c]`, ponder cost
    `[c]`, blocks executed `[c + 1]` and, under a cap, `exact` `[c + 2]`.
    Packing keeps the body's op count low: at batch 1 the loop's cost is
    per-op overhead, not arithmetic (small ints are exact in float32).
    """
    layout = _Layout(encoder, inputs, max_layers)
    state = dict(
        n=tf.constant(0, tf.int32),
        hidden=inputs,
        mask=padding_mask,
        rows=tf.range(layout.batch_size),
        carry=layout.initial_carry(max_layers),
        out=tf.zeros(tf.stack([layout.batch_size, layout.out_width]), tf.float32),
    )

    def body(s):
        n = s["n"]
        hidden = run_block(encoder, n, s["hidden"], s["mask"])
        carry, finished, done = layout.step(n, hidden, s["mask"], s["carry"], halting)

        def compact():
            # Finished rows leave: scatter their results, keep the rest.
            done_at = tf.where(done)[:, 0]
            keep_at = tf.where(tf.logical_not(done))[:, 0]
            rows_done = tf.gather(s["rows"], done_at)[:, None]
            # Only the rows that finish are packed (not every row at every block).
            packed = tf.concat([tf.gather(part, done_at) for part in finished], 1)
            out = s["out"] + tf.scatter_nd(rows_done, packed,
                                           tf.shape(s["out"]))
            return (tf.gather(hidden, keep_at), tf.gather(s["mask"], keep_at),
                    tf.gather(s["rows"], keep_at), tf.gather(carry, keep_at), out)

        def unchanged():
            return hidden, s["mask"], s["rows"], carry, s["out"]

        hidden, mask, rows, carry, out = tf.cond(tf.reduce_any(done), compact, unchanged)
        return (dict(n=n + 1, hidden=hidden, mask=mask, rows=rows, carry=carry, out=out),)

    def loose(t):
        return tf.TensorShape([None]).concatenate(t.shape[1:])

    # Active rows shrink; the outputs' batch size is dynamic too.
    invariants = {k: loose(v) for k, v in state.items()}
    invariants["n"] = tf.TensorShape([])
    (final,) = tf.while_loop(
        lambda s: tf.size(s["rows"]) > 0, body, (state,),
        shape_invariants=(invariants,), maximum_iterations=encoder.num_layers)
    return layout.outputs(final["out"], inputs)


class _Layout:
    """Where each value sits in `loop_forward`'s packed `carry` and `out` columns."""

    def __init__(self, encoder, inputs, max_layers):
        self.encoder = encoder
        self.criterion, self.context = encoder.exit_criterion, encoder.exit_context
        self.c = encoder.num_outputs
        self.k = len(self.criterion.state_fields)
        self.capped = max_layers is not None
        self.batch_size = tf.shape(inputs)[0]
        self.out_width = self.c + 2 + int(self.capped)

    def initial_carry(self, max_layers):
        answer, _ = ops.initial_state(self.batch_size, self.c)
        state = self.criterion.initial_state(self.batch_size, self.context)
        columns = [answer] + [column[:, None] for column in state]
        if self.capped:
            columns.append(tf.cast(max_layers, tf.float32)[:, None])
        return tf.concat(columns, 1)

    def step(self, n, hidden, mask, carry, halting):
        """Block `n`'s heads and exit step: `(carry, the out columns' parts, done)`."""
        c, k, criterion, context = self.c, self.k, self.criterion, self.context
        y, h = self.encoder.heads(self.encoder._pool(hidden, mask), layer_index=n)
        remaining = self.encoder.num_layers - 1 - n
        state = tuple(carry[:, c + i] for i in range(k))
        answer, state, halts = criterion.step(y, h, carry[:, :c], state, remaining, context)
        columns = [answer] + [column[:, None] for column in state]
        last = tf.fill(tf.shape(halts), remaining <= 0)
        done = tf.logical_or(halts, last) if halting else last
        layers = tf.fill(tf.shape(answer[:, :1]), tf.cast(n + 1, tf.float32))
        finished = [answer, criterion.ponder_cost(state, answer)[:, None], layers]
        if self.capped:
            cap = carry[:, c + k]
            proven = criterion.proven(answer, state, remaining, context, halts)
            exact = tf.logical_or(proven, last) if halting else last
            finished.append(tf.cast(exact, tf.float32)[:, None])
            done = tf.logical_or(done, tf.cast(n + 1, tf.float32) >= cap)
            columns.append(cap[:, None])
        return tf.concat(columns, 1), finished, done

    def outputs(self, out, inputs):
        """The encoder's output dict from the finished rows' `out` columns."""
        c = self.c
        out = tf.ensure_shape(out, inputs.shape[:1].concatenate([self.out_width]))
        result = self.encoder._outputs(out[:, :c], tf.cast(out[:, c + 1], tf.int32), out[:, c])
        if self.capped:
            result["exact"] = out[:, c + 2] > 0.5
        return result
