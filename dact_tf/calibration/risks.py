"""What a certified halting mode bounds (`--certified_risk`), as objects.

Each risk turns the early and full-depth answers of the calibration rows
into one loss per row in `[0, 1]` and bounds their mean on unseen rows
(`dact_tf.calibration.risk_bounds`); `certify.certify_halting` tests an
exit method's grid of thresholds against it.
"""

import dataclasses
import numbers

import numpy as np

from dact_tf.calibration import risk_bounds
from dact_tf.evaluation import analysis

#: `MeanDeviation.settled_within`: a regression score within this share of
#: the score range of the full-depth one counts as settled when a learned
#: consistency score is fitted (on a quick STS-B model, 5 % certified 2 %
#: at fewer blocks than the 1 % tolerance, 2 % or 10 %).
SETTLED_SHARE = 0.05


@dataclasses.dataclass(frozen=True)
class Disagreement:
    """A certified halting mode's risk: P(early answer differs from the full-depth one).

    Regression: differs by more than the model's tolerance. Certified with a
    one-sided Clopper-Pearson bound on the rate (`risk_bounds.upper_bound`).

    Attributes:
        epsilon: float in (0, 1), the bound (0.01: 1 % of rows).
    """

    epsilon: float
    name = "disagreement"
    statement = "P(early answer differs from the full-depth answer)"

    def __post_init__(self):
        _check_epsilon(self.epsilon, self.name)

    def check(self, model):
        """Refuses, in one line, a model this risk does not apply to."""

    def losses(self, model, early, full):
        """float `[rows]` in `[0, 1]`: each row's loss (here 1 where the answers differ)."""
        return analysis.differs(model, early, full).astype(np.float64)

    def bound(self, losses, delta):
        return risk_bounds.upper_bound(int(round(losses.sum())), len(losses), delta)

    def rows_needed(self, losses, delta):
        return risk_bounds.rows_needed(losses.mean(), self.epsilon, delta)

    def settled_within(self, model):
        """Regression: how far from the full-depth score an answer may be and count as
        the same one when a learned exit score is fitted (here: the tolerance)."""
        return model.encoder.exit_context.tolerance


@dataclasses.dataclass(frozen=True)
class MeanDeviation(Disagreement):
    """Regression: the mean |early score - full-depth score|, as a share of the score range.

    `epsilon=0.02` on STS-B's 0-5 scale: on average the early score is within
    0.1 of the full-depth score. Certified with a betting bound on the mean
    of a loss in `[0, 1]` (`risk_bounds.mean_upper_bound`).
    """

    name = "mean_deviation"
    statement = ("E|early score - full-depth score| / (the score range), the mean distance "
                 "of an early score from the full-depth one")

    def check(self, model):
        if model.task != "regression":
            raise ValueError("--certified_risk=mean_deviation bounds a regression score's "
                             "distance; a classifier certifies --certified_risk=disagreement.")

    def losses(self, model, early, full):
        self.check(model)
        return analysis.score_distance(model, early, full)

    def bound(self, losses, delta):
        return risk_bounds.mean_upper_bound(losses, delta)

    def rows_needed(self, losses, delta):
        return None

    def settled_within(self, model):
        """`settled_distance`: a score fitted to be within it orders the rows by how far
        they move better than one fitted to the per-row tolerance, which few early
        scores meet."""
        return settled_distance(model)


def settled_distance(model):
    """`SETTLED_SHARE` of a regressor's score range, at least its tolerance: the distance a
    learned exit score is fitted to where a risk weighs how far rows move (a mean)."""
    context = model.encoder.exit_context
    lo, hi = context.output_range
    return max(context.tolerance, SETTLED_SHARE * (hi - lo))


#: `--certified_risk` values of a certified halting mode, and their risks.
HALTING_RISKS = {risk.name: risk for risk in (Disagreement, MeanDeviation)}


def halting_risk(value, kind="disagreement"):
    """A certified halting mode's risk from a bound (`max_disagreement`) and its kind.

    Args:
        value: float in (0, 1), or a risk already (`Disagreement`,
            `MeanDeviation`), returned as it is.
        kind: a `HALTING_RISKS` key (`--certified_risk`).

    Returns:
        The risk object.
    """
    if isinstance(value, Disagreement):
        return value
    if kind not in HALTING_RISKS:
        raise ValueError(f"A certified halting mode bounds one of {sorted(HALTING_RISKS)}, "
                         f"got {kind!r}.")
    return HALTING_RISKS[kind](value)


def _check_epsilon(epsilon, name):
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
            0.0 < float(epsilon) < 1.0):
        raise ValueError(f"The {name} bound (`max_disagreement`) must be in (0, 1) (0.01: "
                         f"1 %), got {epsilon!r}.")
