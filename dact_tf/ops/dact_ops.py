"""The DACT math, as pure TensorFlow ops.

Everything DACT computes lives here and nowhere else: the accumulation of the
per-block answers, the ponder cost, and the halting tests that let inference
skip the remaining blocks. Layers call these functions; nothing re-derives
them. All functions work in float32 whatever the model's compute dtype, so the
halting guarantee holds under mixed precision.

Notation (Eyzaguirre et al., arXiv:2109.11745):

    a_0 = 0,  p_0 = 1
    a_n = p_{n-1} * y_n + (1 - p_{n-1}) * a_{n-1}
    p_n = p_{n-1} * h_n

`y_n` is block n's answer (a distribution over classes, or a bounded score),
`h_n` in (0, 1) its halting value, `a_n` the accumulated answer and `p_n` the
budget: the most weight any later block can still have.

References:
    C. Eyzaguirre, F. del Río, V. Araujo, Á. Soto. DACT-BERT: Differentiable
    Adaptive Computation Time for an Efficient BERT Inference. 2022.
"""

import tensorflow as tf

#: Halting rules accepted by `should_halt`.
HALTING_RULES = ("tight", "paper", "relaxed", "certified", "never")
#: The rules that loosen the tight test by a slack (no proof per row).
_SLACK_RULES = ("relaxed", "certified")
#: Problem types accepted by `should_halt`.
TASKS = ("classification", "regression")


def initial_state(batch_size, num_outputs):
    """The state before the first block: `a_0 = 0`, `p_0 = 1`.

    Args:
        batch_size: int or scalar int tensor.
        num_outputs: int, the number of classes (1 for regression).

    Returns:
        `(answer, budget)`: float32 tensors of shape `[batch_size,
        num_outputs]` (zeros) and `[batch_size]` (ones).
    """
    answer = tf.zeros(tf.stack([batch_size, num_outputs]), tf.float32)
    budget = tf.ones(tf.reshape(batch_size, [1]), tf.float32)
    return answer, budget


def accumulate(answer, budget, block_answer, halting):
    """One step of the DACT recurrence.

    Args:
        answer: `[batch, num_outputs]`, the accumulated answer `a_{n-1}`.
        budget: `[batch]`, the remaining budget `p_{n-1}`.
        block_answer: `[batch, num_outputs]`, block n's answer `y_n`.
        halting: `[batch]`, block n's halting value `h_n` in (0, 1).

    Returns:
        `(a_n, p_n)`, shaped like `answer` and `budget`.

    Example:
    >>> a, p = initial_state(1, 2)
    >>> a, p = accumulate(a, p, tf.constant([[0.9, 0.1]]), tf.constant([0.5]))
    >>> a.numpy(), p.numpy()
    (array([[0.9, 0.1]], dtype=float32), array([0.5], dtype=float32))
    """
    block_answer = tf.cast(block_answer, tf.float32)
    halting = tf.cast(halting, tf.float32)
    weight = budget[:, None]
    new_answer = weight * block_answer + (1.0 - weight) * answer
    return new_answer, budget * halting


def ponder_cost(budgets, axis=0):
    """The ponder cost `sum_n p_n`: the expected number of blocks used.

    Args:
        budgets: float tensor holding `p_1..p_N` along `axis`, e.g. `[N, batch]`.
        axis: the axis of the blocks.

    Returns:
        The per-example ponder cost, `budgets` summed over `axis`.
    """
    return tf.reduce_sum(tf.cast(budgets, tf.float32), axis=axis)


#: Ponder costs accepted by `DactEncoder(ponder=...)`.
PONDER_COSTS = ("budget", "blocks")
#: The temperature of `expected_blocks`' soft halting test.
BLOCKS_TEMPERATURE = 0.25


def expected_blocks(accumulated, budgets, task="classification", output_range=(0.0, 1.0),
                    tolerance=0.05, temperature=BLOCKS_TEMPERATURE):
    """A smooth count of the blocks the tight halting rule runs: a ponder cost.

    The paper's ponder cost `sum_n p_n` is cheap for a model that keeps a
    small budget alive for many blocks: with `p_1 = 0.14` it costs about
    0.5, yet the guaranteed rule cannot stop such a row before its answer
    `a_n`, most of which is block 1's `y_n`, has a wide margin, so it runs
    3 or more blocks. Training then shrinks the first halting values (the
    cheapest way to lower `sum p_n`) and the answers collapse onto the first
    heads. This cost counts what inference runs instead. With the tight
    rule's test written as `g_n > 0`, where

        g_n = q_n * (1 + delta_n) - 1                (classification)
        g_n = (tol - (1 - q_n) * (hi - lo)) / tol    (regression)

    (`q_n = (1 - p_n)^(N - n)`, `delta_n` the margin of `a_n`'s top class,
    held fixed: the cost trains the budgets, never the answers), a row is
    still running after block n with soft probability
    `s_n = sigmoid(-g_n / temperature)`, and

        cost = 1 + sum_{n=1}^{N-1} prod_{m<=n} s_m

    lies in `[1, N]`: close to the blocks the rule executes when the tests
    are far from their thresholds. It models the tight rule whatever rule
    the model halts with (the paper's rule halts no earlier). Keeping the whole budget (`p_n = 1`)
    costs each block it runs and no more, so early blocks are not pushed to
    hand their weight in `a_N` to the first head.

    Args:
        accumulated: float `[N, batch, num_outputs]`, the `a_n`.
        budgets: float `[N, batch]`, the `p_n`.
        task: `"classification"` or `"regression"`.
        output_range: `(lo, hi)`, the range of regression scores.
        tolerance: float > 0, the regression error bound.
        temperature: float > 0, the softness of the test.

    Returns:
        `[batch]` float32.
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}.")
    if not float(temperature) > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    accumulated = tf.cast(accumulated, tf.float32)
    budgets = tf.cast(budgets, tf.float32)
    n = budgets.shape[0]
    if n is None:
        raise ValueError("`budgets` needs a static number of blocks.")
    if n == 1:
        return tf.ones_like(budgets[0])
    remaining = tf.range(n - 1, 0, -1, dtype=tf.float32)[:, None]  # blocks 1..N-1
    q = remaining_weight_bound(budgets[:-1], remaining)
    if task == "regression":
        lo, hi = output_range
        width = float(hi - lo)
        gap = (float(tolerance) - (1.0 - q) * width) / float(tolerance)
    else:
        top2 = tf.math.top_k(tf.stop_gradient(accumulated[:-1]), k=2).values
        gap = q * (1.0 + top2[..., 0] - top2[..., 1]) - 1.0
    running = tf.sigmoid(-gap / float(temperature))
    return 1.0 + tf.reduce_sum(tf.math.cumprod(running, axis=0), axis=0)


def remaining_weight_bound(budget, remaining):
    """`q = (1 - p_n)^d`: a lower bound on the weight `a_n` keeps in `a_N`.

    Args:
        budget: `[batch]`, `p_n`.
        remaining: scalar or `[batch]`, `d = N - n`, the blocks left.

    Returns:
        `[batch]` float32.
    """
    remaining = tf.cast(remaining, tf.float32)
    return tf.pow(1.0 - budget, remaining)


def should_halt(
    answer,
    budget,
    remaining,
    *,
    task="classification",
    rule="tight",
    margin=1e-5,
    epsilon=0.0,
    slack=0.0,
    tolerance=0.05,
    output_range=(0.0, 1.0),
):
    """Whether the remaining blocks can be skipped, per example.

    Rules for classification (`c*` the top class of `a_n`, `c2` the
    runner-up, `delta = a_n[c*] - a_n[c2]`, `d` blocks left,
    `q = (1 - p_n)^d`):

    - `"tight"` (default, guaranteed): `q * (1 + delta) > 1 + margin`.
      Implies `argmax a_N == argmax a_n`, and no weaker test has that
      guarantee.
    - `"paper"` (guaranteed, the paper's form):
      `a_n[c*] * q > a_n[c2] + d * p_n + margin`. Never halts earlier than
      `"tight"`.
    - `"relaxed"` (no guarantee): halts when `p_n < epsilon` or when the tight
      test passes with `slack` subtracted from its right-hand side.
    - `"certified"` (a certified rate, no proof per row): the tight test
      with `slack` subtracted from its right-hand side, the slack being the
      most aggressive one whose disagreement with full depth a certificate
      bounded on held-out rows (`dact_tf.calibration.certify.certify_halting`);
      `epsilon` is not read.
    - `"never"`: never halts (full depth).

    For regression (`a_n` a score in `[lo, hi]`) the guaranteed bound is
    `|a_N - a_n| <= (1 - q) * (hi - lo)`; `"tight"` and `"paper"` halt when
    that bound is at most `tolerance`, `"relaxed"` when it is at most
    `tolerance + slack` or `p_n < epsilon`.

    With `d == 0` (the last block) every guaranteed rule reduces to a test
    that needs no more blocks; callers stop there anyway.

    Args:
        answer: `[batch, num_outputs]`, `a_n`.
        budget: `[batch]`, `p_n`.
        remaining: scalar int or `[batch]`, `d = N - n`.
        task: `"classification"` or `"regression"`.
        rule: one of `HALTING_RULES`.
        margin: float >= 0, a safety margin against float rounding in the
            guaranteed classification rules.
        epsilon: float, the budget threshold of the relaxed rule.
        slack: float >= 0, how much the relaxed rule loosens the test.
        tolerance: float > 0, the regression error bound.
        output_range: `(lo, hi)`, the range of regression scores.

    Returns:
        `[batch]` bool.
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}.")
    if rule not in HALTING_RULES:
        raise ValueError(f"`rule` must be one of {HALTING_RULES}, got {rule!r}.")
    answer = tf.cast(answer, tf.float32)
    budget = tf.cast(budget, tf.float32)
    if rule == "never":
        return tf.zeros_like(budget, dtype=tf.bool)
    q = remaining_weight_bound(budget, remaining)
    if task == "regression":
        lo, hi = output_range
        bound = (1.0 - q) * float(hi - lo)
        limit = tolerance + (slack if rule in _SLACK_RULES else 0.0)
        halt = bound <= limit
    else:
        top2 = tf.math.top_k(answer, k=2).values
        first, second = top2[:, 0], top2[:, 1]
        if rule == "paper":
            d = tf.cast(remaining, tf.float32)
            halt = first * q > second + d * budget + margin
        else:
            rhs = 1.0 + margin - (slack if rule in _SLACK_RULES else 0.0)
            halt = q * (1.0 + first - second) > rhs
    if rule == "relaxed":
        halt = tf.logical_or(halt, budget < epsilon)
    return halt


def first_halting_layer(halts):
    """The 1-based block at which each example first halts.

    Args:
        halts: `[num_layers, batch]` bool, `halts[n, b]` whether example b
            passes the halting test after block n + 1.

    Returns:
        `[batch]` int32 in `1..num_layers`; `num_layers` where no block halts
        (the last block always ends the computation).
    """
    forced = tf.concat(
        [halts[:-1], tf.ones_like(halts[-1:], dtype=tf.bool)], axis=0
    )
    first = tf.argmax(tf.cast(forced, tf.int32), axis=0, output_type=tf.int32)
    return first + 1


def distillation_loss(block_answers, accumulated, task="classification", output_range=None,
                      teacher=None):
    """Distillation of every answer towards the deepest head's, or a given teacher's.

    The teacher is the last block's own answer `t = y_N`, held fixed
    (`tf.stop_gradient`). With `D(t, x)` the KL divergence `KL(t || x) =
    sum_c t_c (log t_c - log x_c)` for classification, or the squared
    difference `((t - x) / (hi - lo))^2` for regression:

        loss = ( mean_{n<N} D(t, y_n) + mean_{n<=N} D(t, a_n) ) / 2

    averaged over examples (with N == 1 the first mean is 0). Early heads
    learn the full-depth answer (FastBERT's self-distillation), and the
    accumulated answers `a_n`, which an early exit returns, are kept close
    to it at every block.

    With `teacher` given (another model's answers, e.g. the plain
    full-depth model DACT starts from), `t` is that answer, held fixed, and
    every head learns it, the last one too:

        loss = ( mean_{n<=N} D(t, y_n) + mean_{n<=N} D(t, a_n) ) / 2

    Args:
        block_answers: float `[N, batch, num_outputs]`, the `y_n`.
        accumulated: float `[N, batch, num_outputs]`, the `a_n`.
        task: `"classification"` or `"regression"`.
        output_range: `(lo, hi)` for regression (None: `(0, 1)`).
        teacher: float `[batch, num_outputs]`, the answers to learn
            (probabilities, or scores), or None: the last head's `y_N`.

    Returns:
        A float32 scalar.
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}.")
    answers = tf.cast(block_answers, tf.float32)
    accumulated = tf.cast(accumulated, tf.float32)
    students = answers[:-1] if teacher is None else answers
    if teacher is not None:
        teacher = tf.cast(teacher, tf.float32)
        if teacher.shape.rank != 2 or not teacher.shape[1:].is_compatible_with(answers.shape[2:]):
            raise ValueError(f"`teacher` must be [batch, {answers.shape[-1]}] answers, got shape "
                             f"{teacher.shape}.")
    teacher = tf.stop_gradient(answers[-1] if teacher is None else teacher)

    def divergence(x):  # [n, batch, outputs] -> [n, batch]
        if task == "regression":
            lo, hi = output_range or (0.0, 1.0)
            return tf.reduce_sum(tf.square((teacher - x) / float(hi - lo)), axis=-1)
        eps = 1e-7
        log_t = tf.math.log(teacher + eps)
        return tf.reduce_sum(teacher * (log_t - tf.math.log(x + eps)), axis=-1)

    heads = tf.reduce_mean(divergence(students)) if students.shape[0] != 0 else 0.0
    return (heads + tf.reduce_mean(divergence(accumulated))) / 2.0
