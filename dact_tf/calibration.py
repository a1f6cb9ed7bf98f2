"""Compute budgets in blocks: set a trained DACT model's halting to a target.

Users think in compute ("about 3 of 6 blocks"), not in tau. After training,
`calibrate_halting_bias` shifts the bias of every halting unit by one common
amount `s`, `h_n = sigmoid(W_h z_n + b_h + s)`, chosen by bisection so that
the mean number of blocks the early exit runs on some held-out rows is the
target. A lower bias halts earlier. The shifted model is an ordinary DACT
model: its early exit still returns exactly its full-depth prediction.

The search needs one pass of the model over the rows: the heads' answers
`y_n` and halting logits do not depend on the shift, so every candidate `s`
is scored by re-running only the DACT recurrence and halting rule (the ops
of `dact_tf.ops`) on the recorded trace.
"""

import numpy as np

from dact_tf import analysis

_MAX_SHIFT = 30.0


def exit_layers_for_shift(model, answers, halting_logits, shift):
    """The exit block of every row if the halting biases moved by `shift`.

    Args:
        model: the `DactClassifier` (its halting rule and settings).
        answers: float `[N, rows, outputs]`, the heads' `y_n`.
        halting_logits: float `[N, rows]`, the halting units' logits.
        shift: float, the common bias shift.

    Returns:
        int `[rows]`, 1-based blocks.
    """
    trace = {"answers": answers, "halting_logits": halting_logits}
    return analysis.replay_exits(model, trace, shift)[0]


def calibrate_halting_bias(model, dataset, target_blocks, tolerance=0.02, apply=True):
    """Shifts the halting biases so the mean blocks on `dataset` is `target_blocks`.

    Args:
        model: a trained `DactClassifier` with `method="dact"`.
        dataset: batches of features (or `(features, labels)`), e.g. rows
            held out of the training data.
        target_blocks: float in `[1, N]`, the mean blocks to aim at.
        tolerance: float, stop the bisection this close to the target.
        apply: bool, whether to add the shift to the model's halting biases
            (otherwise only report it).

    Returns:
        A dict: `shift` (added to every halting bias), `mean_layers_executed`
        (on `dataset`, after the shift), `before` (the mean before) and
        `target_blocks`.

    Example:
    ```python
    result = calibrate_halting_bias(model, holdout, target_blocks=3.0)
    result["mean_layers_executed"]  # about 3.0
    ```
    """
    if not model.exit_criterion.accumulates:
        raise ValueError(
            f"Only DACT models have halting units to calibrate, not method={model.method!r}."
        )
    n = model.num_layers
    if not 1.0 <= float(target_blocks) <= n:
        raise ValueError(f"`target_blocks` must be in [1, {n}], got {target_blocks}.")
    trace, _ = analysis.trace_dataset(model, dataset)
    answers, halting = trace["answers"], trace["halting"]
    halting = np.clip(halting.astype(np.float64), 1e-12, 1 - 1e-12)
    logits = np.log(halting) - np.log1p(-halting)

    def mean_blocks(shift):
        return float(exit_layers_for_shift(model, answers, logits, shift).mean())

    before = mean_blocks(0.0)
    lo, hi = -_MAX_SHIFT, _MAX_SHIFT  # mean blocks grows with the shift
    best = (abs(before - target_blocks), 0.0, before)
    for _ in range(40):
        mid = (lo + hi) / 2.0
        blocks = mean_blocks(mid)
        best = min(best, (abs(blocks - target_blocks), mid, blocks))
        if abs(blocks - target_blocks) <= tolerance:
            break
        if blocks < target_blocks:
            lo = mid
        else:
            hi = mid
    _, shift, blocks = best
    if apply and shift:
        model.encoder.heads.shift_halting_bias(shift)
        model.predict_function = model.test_function = None
    return {
        "shift": float(shift),
        "mean_layers_executed": blocks,
        "before": before,
        "target_blocks": float(target_blocks),
    }
