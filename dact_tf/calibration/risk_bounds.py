"""Distribution-free bounds on a rate, and testing an ordered grid of thresholds.

A threshold rule (DACT's relaxed halting, a shifted halting bias, DeeBERT's
entropy, PABEE's patience) cannot be proven to keep an answer; it can be
certified on rows no other choice has seen. The method is Learn-then-Test
(Angelopoulos, Bates, Candes, Jordan, Lei, 2021), as CATs (Schuster et al.,
2021) and "Fast yet Safe" (Jazbec et al., 2024) use it for early exit:

- The risk of a setting is a rate: the probability that a row is "at risk"
  (e.g. its early answer differs from the full-depth one). On `n` rows,
  `k` of them at risk, the one-sided Clopper-Pearson upper bound
  `U(k, n, delta)` is the rate `p` at which seeing `k` or fewer rows at risk
  has probability `delta`: if `U <= epsilon`, the true rate is at most
  `epsilon` with probability at least `1 - delta` (over the draw of the
  rows), whatever the distribution of the rows.
- Many settings: order them from the safest to the most aggressive and test
  them in that order, each at level `delta`, stopping at the first that
  fails (fixed-sequence testing). Every setting that passed keeps the
  guarantee at once, without a multiplicity correction, so any of them
  may be chosen, e.g. the most aggressive one or the one closest to a
  compute target.

Nothing here needs SciPy: the binomial tail is summed in log space (exact
to float64 rounding) and the bound found by bisection. A mean loss in
`[0, 1]` (e.g. a regression score's distance from its full-depth value)
has its own bound, by betting (`mean_upper_bound`).
"""

import math

#: The default confidence of a certificate, `1 - delta`.
DEFAULT_CONFIDENCE = 0.95


def _check(k, n, delta):
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"The number of rows must be an integer >= 1, got {n!r}.")
    if isinstance(k, bool) or int(k) != k or not 0 <= k <= n:
        raise ValueError(f"The rows at risk must be an integer in [0, {n}], got {k!r}.")
    if not 0.0 < float(delta) < 1.0:
        raise ValueError(f"`delta` (1 - confidence) must be in (0, 1), got {delta!r}.")
    return int(k), int(n), float(delta)


def binomial_cdf(k, n, p):
    """`P(X <= k)` for `X ~ Binomial(n, p)`, summed in log space.

    Args:
        k: int in `[0, n]`.
        n: int >= 1.
        p: float in `[0, 1]`.

    Returns:
        float in `[0, 1]`.
    """
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
             + i * log_p + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def upper_bound(k, n, delta):
    """The one-sided Clopper-Pearson upper confidence bound of a rate.

    Args:
        k: int, the rows at risk.
        n: int >= 1, the rows.
        delta: float in (0, 1), one minus the confidence.

    Returns:
        float `U` in `(0, 1]`: `P(Binomial(n, U) <= k) = delta` (1 when
        `k == n`). The true rate is below `U` with probability at least
        `1 - delta`.

    Example:
    >>> round(upper_bound(0, 400, 0.05), 4)  # no row at risk of 400
    0.0075
    """
    k, n, delta = _check(k, n, delta)
    if k == n:
        return 1.0
    if k == 0:  # closed form: (1 - U)^n = delta
        return -math.expm1(math.log(delta) / n)
    lo, hi = k / n, 1.0  # the tail falls as p grows
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if binomial_cdf(k, n, mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return hi


def lower_bound(k, n, delta):
    """The one-sided Clopper-Pearson lower confidence bound of a rate.

    Returns:
        float `L` in `[0, 1)`: the true rate is above `L` with probability
        at least `1 - delta` (0 when `k == 0`).
    """
    k, n, delta = _check(k, n, delta)
    return 1.0 - upper_bound(n - k, n, delta)


def difference_upper_bound(worse, better, n, delta):
    """An upper confidence bound on `P(worse) - P(better)`, e.g. an accuracy drop.

    Paired comparisons of two models on `n` rows: `worse` rows the first
    answers wrongly where the second answers rightly, `better` the other
    way round (the discordant rows; every other row counts for neither).
    The drop factors as `q * (2 r - 1)`, where `q = P(worse) + P(better)`
    is the discordant rate and `r = P(worse | discordant)`. Given the
    number of discordant rows `d = worse + better`, `worse` is exactly
    `Binomial(d, r)` (McNemar's conditioning), so the bound is

        `U(d, n, delta / 2) * (2 U(worse, d, delta / 2) - 1)`

    with `U` the one-sided Clopper-Pearson upper bound, or 0 when the
    second factor is negative (then the drop is at most 0). Each bound
    fails with probability at most `delta / 2` (the conditional one for
    every `d`, hence also unconditionally), so both hold, and the drop is
    below the product, with probability at least `1 - delta`, whatever the
    distribution of the rows.

    Bounding `P(worse)` from above and `P(better)` from below separately
    (a union bound on the two margins) is also valid but ignores that the
    two counts come from the same few discordant rows: when they are
    balanced, e.g. 8 worse and 16 better of 480, it gives +1.34 % where
    this gives +0.78 %. When nearly every discordant row is worse the two
    agree within a few tenths of a point.

    Args:
        worse, better: ints, disjoint row counts (`worse + better <= n`).
        n: int >= 1, the rows.
        delta: float in (0, 1).

    Returns:
        float in `[0, 1]`.

    Example:
    >>> round(difference_upper_bound(8, 16, 480, 0.05), 4)
    0.0078
    """
    for count in (worse, better):
        _check(count, max(worse + better, 1), delta)
    discordant, n, delta = _check(worse + better, n, delta)
    if discordant == 0:  # r unknown: its bound is 1, the drop at most q
        return upper_bound(0, n, delta / 2.0)
    share = upper_bound(worse, discordant, delta / 2.0)
    if share <= 0.5:
        return 0.0
    return upper_bound(discordant, n, delta / 2.0) * (2.0 * share - 1.0)


def rows_needed(rate, epsilon, delta, better_rate=None, limit=10_000_000):
    """About how many rows certify `epsilon` when the observed rate is `rate`.

    Args:
        rate: float in `[0, 1]`, the rate seen (rows at risk / rows).
        epsilon: float in (0, 1), the bound to certify.
        delta: float in (0, 1).
        better_rate: None for `upper_bound`; for `difference_upper_bound`,
            the rate of the rows counted the other way.
        limit: int, the most rows to consider.

    Returns:
        The smallest `n` (to a few percent) whose bound, with the counts
        these rates give (rounded up, and down for `better_rate`), is at
        most `epsilon`; None where no number of rows does (the rate, or the
        difference, is at least `epsilon`) or it is above `limit`.
    """
    if not 0.0 < float(epsilon) < 1.0:
        raise ValueError(f"`epsilon` must be in (0, 1), got {epsilon!r}.")
    if rate - (better_rate or 0.0) >= epsilon:
        return None

    def passes(n):
        worse = min(n, math.ceil(rate * n - 1e-9))
        if better_rate is None:
            return upper_bound(worse, n, delta) <= epsilon
        better = min(n - worse, math.floor(better_rate * n + 1e-9))
        return difference_upper_bound(worse, better, n, delta) <= epsilon

    hi = 1
    while not passes(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while hi - lo > max(1, lo // 50):
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def fixed_sequence(at_risk, n, epsilon, delta):
    """Tests an ordered grid of settings, safest first, stopping at the first failure.

    Args:
        at_risk: ints, the rows at risk under each setting, in the order
            to test (safest first).
        n: int, the rows.
        epsilon: float in (0, 1), the bound on the risk.
        delta: float in (0, 1).

    Returns:
        `(passed, bounds)`: how many leading settings passed (each of them
        has risk at most `epsilon` with probability at least `1 - delta`,
        all at once), and the upper bound of every setting tested (the
        settings after the first failure are not tested).

    Example:
    >>> fixed_sequence([0, 1, 9, 2], n=1000, epsilon=0.01, delta=0.05)[0]
    2
    """
    if not 0.0 < float(epsilon) < 1.0:
        raise ValueError(f"`epsilon` must be in (0, 1), got {epsilon!r}.")
    bounds = []
    for k in at_risk:
        bounds.append(upper_bound(k, n, delta))
        if bounds[-1] > epsilon:
            return len(bounds) - 1, bounds
    return len(bounds), bounds


#: The largest bet of `mean_upper_bound` (a share of the capital; below 1 keeps it positive).
_MAX_BET = 0.75
#: The seed of the order the betting bounds take the rows in (`betting_order`).
BETTING_ORDER_SEED = 0


def betting_order(values):
    """The order in which the betting bounds see the rows: shuffled, the same for any order given.

    A bet on the rows one after the other is valid when they come in random
    order, and rows seldom do: a data file is often grouped (STS-B's
    training file comes genre by genre), and the held-out rows keep the
    file's order. Betting on a low-loss group first then lets the capital
    grow against a true mean, and the bound falls below it. So the values
    are sorted, which forgets the order they came in, then shuffled with a
    fixed seed (`BETTING_ORDER_SEED`), which stands in for a random order
    and keeps a certificate reproducible: the bound depends on the values
    only.

    Args:
        values: 1-D NumPy array.

    Returns:
        The values, in the order the bet takes them.

    Example:
    >>> import numpy as np
    >>> a = betting_order(np.array([0.1, 0.9, 0.5]))
    >>> bool((a == betting_order(np.array([0.9, 0.5, 0.1]))).all())
    True
    """
    import numpy as np

    ordered = np.sort(values, kind="stable")
    return ordered[np.random.default_rng(BETTING_ORDER_SEED).permutation(ordered.size)]


def mean_upper_bound(losses, delta):
    """An upper confidence bound on the mean of a loss in `[0, 1]`, by betting.

    A gambler bets against "the mean is at least `m`" on the rows one after
    the other: after each row `x_i` the capital is multiplied by
    `1 + lambda_i (m - x_i)`, where the bet `lambda_i` in `[0, 0.75]` is
    chosen from the rows before it (the predictable plug-in of Waudby-Smith
    and Ramdas, "Estimating means of bounded random variables by betting",
    2024: large when the losses seen vary little). When the mean is at
    least `m` the capital is a nonnegative supermartingale, so by Ville's
    inequality it reaches `1 / delta` with probability at most `delta`.
    The bound is the smallest `m` whose capital reaches it; as the
    capital grows with `m`, every larger `m` is rejected too.

    Unlike a bound on a rate (`upper_bound`), it adapts to the spread of
    the losses: many rows at or near 0 and a few larger ones give a bound
    close to their mean, where Hoeffding's inequality would add
    `sqrt(log(1 / delta) / (2 n))` whatever the spread.

    The rows are bet on in `betting_order` (shuffled with a fixed seed
    whatever order they come in), so the bound depends on the values only.

    Args:
        losses: 1-D sequence of floats in `[0, 1]`, one per row, in any
            order.
        delta: float in (0, 1), one minus the confidence.

    Returns:
        float `U` in `(0, 1]`: the mean loss is below `U` with probability
        at least `1 - delta`, whatever the distribution of the rows.

    Example:
    >>> round(mean_upper_bound([0.0] * 1000, 0.05), 4)  # every loss 0: about log(20) / 750
    0.004
    """
    return _betting_upper_bound(_checked_values(losses, 0.0), delta, floor=0.0)


#: The lowest mean `mean_difference_upper_bound` tests: with bets of at most
#: `_MAX_BET` on values up to 1, the capital stays positive above it.
_DIFFERENCE_FLOOR = 1.0 - 1.0 / _MAX_BET


def mean_difference_upper_bound(differences, delta):
    """An upper confidence bound on the mean of a paired difference in `[-1, 1]`, by betting.

    The bet of `mean_upper_bound`, on values that may be negative: e.g. a
    regression model's absolute error less a reference model's, as a share
    of the score range, row by row. Tested means start at
    `1 - 1 / 0.75 = -1/3`, where bets of at most 0.75 keep the capital
    positive, so a bound below it is reported as -1/3 (still an upper
    bound).

    Args:
        differences: 1-D sequence of floats in `[-1, 1]`, in any order
            (bet on in `betting_order`).
        delta: float in (0, 1), one minus the confidence.

    Returns:
        float in `[-1/3, 1]`: the mean difference is below it with
        probability at least `1 - delta`.

    Example:
    >>> round(mean_difference_upper_bound([0.0] * 1000, 0.05), 4)  # about log(20) / 750
    0.004
    """
    return _betting_upper_bound(_checked_values(differences, -1.0), delta,
                                floor=_DIFFERENCE_FLOOR)


def _checked_values(values, low):
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 1:
        raise ValueError(f"The values must be a 1-D sequence of at least one value, got shape "
                         f"{x.shape}.")
    if not np.all(np.isfinite(x)) or x.min() < low or x.max() > 1.0:
        raise ValueError(f"Every value must be a number in [{low:g}, 1].")
    return x


def _betting_upper_bound(x, delta, floor):
    """`mean_upper_bound`'s capital on `x` (at most 1), bisected over means in `[floor, 1]`."""
    import numpy as np

    _check(0, x.size, delta)
    x = betting_order(x)
    n, log_target = x.size, math.log(1.0 / delta)
    seen = np.arange(1, n + 1)
    means = (0.5 + np.cumsum(x)) / (seen + 1)  # mean_i, after rows 1..i
    variances = (0.25 + np.cumsum((x - means) ** 2)) / (seen + 1)
    before = np.concatenate([[0.25], variances[:-1]])  # what the bet on row i may know
    bets = np.minimum(np.sqrt(2.0 * log_target / (n * before)), _MAX_BET)

    def rejected(m):
        return np.cumsum(np.log1p(bets * (m - x))).max() >= log_target

    if not rejected(1.0):
        return 1.0
    if rejected(floor + 1e-12):
        return floor
    lo, hi = floor, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if rejected(mid):
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-9:
            break
    return hi


def delta_from_confidence(confidence):
    """`1 - confidence`, checked (a confidence in (0, 1))."""
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"The confidence must be in (0, 1) (e.g. 0.95), got {confidence!r}.")
    return 1.0 - confidence
