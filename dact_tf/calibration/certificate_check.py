"""Do new rows contradict a halting certificate? (`dact-tf evaluate`'s check).

A certificate (`certify.certify_halting`) bounds a risk on unseen rows *of
the calibration rows' distribution*. Rows from elsewhere (SST-2's dev
sentences against its training phrases, say) may break it, and nothing in
the certificate can tell. The evaluation rows can: if their own rate is
above the certified bound by more than chance allows (a one-sided lower
confidence bound, at the certificate's confidence, above the bound), the
certificate does not carry to them, and the model should be certified
again on rows like them (`dact-tf calibrate --calibration_file=...`, or
`--calibration_min_tokens=N` where they are longer than the training rows).

A measured rate above the bound whose lower confidence bound is not is no
contradiction: on a few hundred rows the rate of a model that meets its
bound exactly lands above it about half the time.
"""

import math

from dact_tf.calibration import risk_bounds

#: The quantity `dact-tf evaluate` measures for each risk of a halting certificate.
_MEASURED = {"disagreement": "full_depth_disagreement",
             "mean_deviation": "full_depth_mean_deviation"}


def check_halting(certificate, results):
    """Whether evaluation results contradict a certified halting mode's certificate.

    Args:
        certificate: a model's `certificates["halting"]` (a dict, as
            `certify.certify_halting` makes it), or None.
        results: `dact_tf.evaluation.scoring.evaluate`'s dict with
            `full_depth_disagreement=True` (it needs `num_examples` and the
            measured quantity: `full_depth_disagreement`, or
            `full_depth_mean_deviation` for a regression mean-deviation
            certificate).

    Returns:
        None when there is nothing to check (no certified halting
        certificate, or the results lack the quantity); else a dict with
        `quantity`, `measured`, `lower_bound` (the rate or mean on these
        rows' distribution is above it with the certificate's confidence:
        Clopper-Pearson for a rate, Hoeffding for a mean of a loss in
        [0, 1]), `epsilon`, `confidence`, `rows` and `contradicted`
        (`lower_bound > epsilon`).

    Example:
        >>> check_halting({"kind": "halting", "certified": True, "epsilon": 0.02,
        ...                "confidence": 0.95, "risk_kind": "disagreement"},
        ...               {"num_examples": 872, "full_depth_disagreement": 28 / 872}
        ...               )["contradicted"]
        True
    """
    if not certificate or certificate.get("kind") != "halting" or not certificate.get(
            "certified"):
        return None
    risk = certificate.get("risk_kind", "disagreement")
    quantity = _MEASURED.get(risk)
    if quantity not in results or not results.get("num_examples"):
        return None
    n, measured = int(results["num_examples"]), float(results[quantity])
    delta = risk_bounds.delta_from_confidence(certificate["confidence"])
    if risk == "disagreement":
        lower = risk_bounds.lower_bound(int(round(measured * n)), n, delta)
    else:
        lower = max(0.0, measured - math.sqrt(math.log(1.0 / delta) / (2.0 * n)))
    return {"quantity": quantity, "measured": measured, "lower_bound": float(lower),
            "epsilon": float(certificate["epsilon"]),
            "confidence": float(certificate["confidence"]), "rows": n,
            "contradicted": bool(lower > certificate["epsilon"])}


def message(check):
    """One line for a user when `check_halting` found a contradiction, else None."""
    if not check or not check["contradicted"]:
        return None
    what = ("of the early answers differ from full depth" if check["quantity"] ==
            "full_depth_disagreement" else "of the score range is the mean early distance "
            "from full depth")
    return (f"Warning: on these {check['rows']} rows {check['measured']:.2%} {what} (at least "
            f"{check['lower_bound']:.2%} at {check['confidence']:.0%} confidence), above the "
            f"certified {check['epsilon']:.2%}: the certificate does not carry to rows like "
            "these. Certify again on rows like them: dact-tf calibrate --calibration_file=FILE "
            "(labelled), or --calibration_min_tokens=N where these rows are longer.")
