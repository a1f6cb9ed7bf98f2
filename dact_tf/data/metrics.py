"""GLUE metrics in pure NumPy (no scipy / scikit-learn needed).

Conventions follow scikit-learn and scipy, which GLUE's reference scripts
use: F1 and Matthews correlation are 0.0 when undefined (no predicted or no
true positives / a constant prediction); Pearson and Spearman are NaN for a
constant input. Spearman uses average ranks for ties.

| task | metrics |
|---|---|
| sst2, rte, qnli | accuracy |
| mrpc | accuracy, f1 |
| cola | matthews_corrcoef |
| stsb | pearson, spearman |
"""

import numpy as np

TASK_METRICS = {
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "rte": ("accuracy",),
    "qnli": ("accuracy",),
    "cola": ("matthews_corrcoef",),
    "stsb": ("pearson", "spearman"),
    "classification": ("accuracy",),
    "binary": ("accuracy", "f1"),
    "regression": ("pearson", "spearman"),
}
_REGRESSION_METRICS = ("pearson", "spearman")


def accuracy(y_true, y_pred):
    """Fraction of predictions equal to the labels.

    Args:
        y_true: int array `[num_examples]`.
        y_pred: int array `[num_examples]`.

    Returns:
        float in [0, 1].

    Example:
    ```python
    accuracy([0, 1, 1, 0], [0, 1, 0, 0])  # 0.75
    ```
    """
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def f1_score(y_true, y_pred, positive_label=1):
    """F1 of the positive class (binary F1, as GLUE scores MRPC and QQP).

    Args:
        y_true: int array `[num_examples]`.
        y_pred: int array `[num_examples]`.
        positive_label: int. The class counted as positive.

    Returns:
        float in [0, 1]; 0.0 when there are no true and no predicted
        positives.

    Example:
    ```python
    f1_score([1, 1, 0, 0], [1, 0, 1, 0])  # 0.5
    ```
    """
    y_true, y_pred = _pair(y_true, y_pred)
    true_pos = y_true == positive_label
    pred_pos = y_pred == positive_label
    tp = np.sum(true_pos & pred_pos)
    denominator = np.sum(true_pos) + np.sum(pred_pos)
    if denominator == 0:
        return 0.0
    return float(2.0 * tp / denominator)


def matthews_corrcoef(y_true, y_pred):
    """Matthews correlation coefficient (multi-class form; CoLA's metric).

    With `C` the confusion matrix, `t_k`/`p_k` the true/predicted counts of
    class `k`, `c` the correct count and `s` the total:
    `(c*s - sum_k p_k*t_k) / sqrt((s^2 - sum_k p_k^2) * (s^2 - sum_k t_k^2))`,
    which for two classes is `(TP*TN - FP*FN) / sqrt(...)`.

    Args:
        y_true: int array `[num_examples]`.
        y_pred: int array `[num_examples]`.

    Returns:
        float in [-1, 1]; 0.0 when undefined (a constant column).

    Example:
    ```python
    matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])  # 0.577...
    ```
    """
    y_true, y_pred = _pair(y_true, y_pred)
    classes, encoded = np.unique(
        np.concatenate([y_true, y_pred]), return_inverse=True
    )
    n = len(y_true)
    t = np.bincount(encoded[:n], minlength=len(classes)).astype(np.float64)
    p = np.bincount(encoded[n:], minlength=len(classes)).astype(np.float64)
    c = float(np.sum(y_true == y_pred))
    s = float(n)
    numerator = c * s - np.dot(p, t)
    denominator = np.sqrt((s * s - np.dot(p, p)) * (s * s - np.dot(t, t)))
    if denominator == 0:
        return 0.0
    return float(numerator / denominator)


def pearson(y_true, y_pred):
    """Pearson correlation coefficient.

    Args:
        y_true: float array `[num_examples]`.
        y_pred: float array `[num_examples]`.

    Returns:
        float in [-1, 1]; NaN when either input is constant.

    Example:
    ```python
    pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])  # 0.993...
    ```
    """
    x, y = _pair(y_true, y_pred, dtype=np.float64)
    x = x - x.mean()
    y = y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if denominator == 0:
        return float("nan")
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def rankdata(values):
    """Ranks 1..n with ties given their average rank (scipy's default).

    Args:
        values: 1-D array.

    Returns:
        float64 array of ranks.

    Example:
    ```python
    rankdata([10, 20, 10, 30])  # [1.5, 3., 1.5, 4.]
    ```
    """
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values.
    starts = np.flatnonzero(
        np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    )
    ends = np.concatenate([starts[1:], [len(values)]])
    average = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1..end
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(y_true, y_pred):
    """Spearman rank correlation (Pearson of average ranks).

    Args:
        y_true: float array `[num_examples]`.
        y_pred: float array `[num_examples]`.

    Returns:
        float in [-1, 1]; NaN when either input is constant.

    Example:
    ```python
    spearman([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])  # 1.0
    ```
    """
    x, y = _pair(y_true, y_pred, dtype=np.float64)
    return pearson(rankdata(x), rankdata(y))


METRICS = {
    "accuracy": accuracy,
    "f1": f1_score,
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def task_metrics(task_name, y_true, y_pred):
    """Computes a task's GLUE metrics.

    Args:
        task_name: str. A GLUE task (`"sst2"`, `"mrpc"`, `"rte"`, `"qnli"`,
            `"cola"`, `"stsb"`; `"glue/"` prefixes and `"SST-2"` spellings
            are accepted), or `"classification"` (accuracy), `"binary"`
            (accuracy, F1) or `"regression"` (Pearson, Spearman).
        y_true: labels `[num_examples]`: class ids, or float targets.
        y_pred: predictions: class ids `[num_examples]`, scores/logits
            `[num_examples, num_classes]` (arg-maxed), or for regression
            floats `[num_examples]` or `[num_examples, 1]`.

    Returns:
        dict: metric name -> float, e.g. `{"accuracy": 0.91, "f1": 0.88}`.

    Example:
    ```python
    task_metrics("mrpc", [1, 0, 1], [[0.1, 0.9], [0.8, 0.2], [0.7, 0.3]])
    # {"accuracy": 0.666..., "f1": 0.666...}
    ```
    """
    key = str(task_name).lower().removeprefix("glue/").replace("-", "")
    if key not in TASK_METRICS:
        raise ValueError(
            f"Unknown task {task_name!r}; supported: {sorted(TASK_METRICS)}."
        )
    names = TASK_METRICS[key]
    y_pred = np.asarray(y_pred)
    if names[0] in _REGRESSION_METRICS:
        if y_pred.ndim == 2 and y_pred.shape[1] == 1:
            y_pred = y_pred[:, 0]
    elif y_pred.ndim == 2:
        y_pred = np.argmax(y_pred, axis=-1)
    return {name: METRICS[name](y_true, y_pred) for name in names}


def _pair(y_true, y_pred, dtype=None):
    y_true = np.asarray(y_true, dtype=dtype)
    y_pred = np.asarray(y_pred, dtype=dtype)
    if y_true.ndim != 1 or y_pred.shape != y_true.shape:
        raise ValueError(
            "y_true and y_pred must be 1-D and of the same length, got "
            f"shapes {y_true.shape} and {y_pred.shape}."
        )
    if y_true.size == 0:
        raise ValueError("y_true and y_pred are empty.")
    return y_true, y_pred
