"""The calibration step of a run: a compute target and a halting mode, certified.

`dact-tf train` ends with it, and `dact-tf calibrate` runs it again on a
trained model directory without retraining; both write `calibration.json`
(what `calibrate` returns) and the model. See `dact_tf.calibration.certify` for what is
certified and how.
"""

import copy
import sys

from dact_tf.calibration import halting_bias
from dact_tf.calibration import certified_drop as certified_drop_lib
from dact_tf.calibration import certify
from dact_tf import exits
from dact_tf.calibration import risk_bounds
from dact_tf.callbacks import halting_statistics

CALIBRATION_FILE = "calibration.json"

#: `rows_source`: calibration rows no other choice saw, or the selection rows themselves.
KEPT_APART = certify.KEPT_APART
SHARED = certify.SHARED
#: A certified halting mode's risk from `max_disagreement` and `--certified_risk`.
halting_risk = certify.halting_risk
#: The seed of `split_rows`' draw.
SPLIT_SEED = 20211011


def check_flags(method, halting_rule, max_disagreement, max_drop, confidence,
                certified_risk="disagreement"):
    """Refuses, before any long work, certificate settings that cannot be met."""
    for name, value in (("max_disagreement", max_disagreement),
                        ("calibration_max_drop", max_drop)):
        if value is not None and not 0.0 < float(value) < 1.0:
            raise ValueError(f"--{name} must be in (0, 1) (0.01: 1 %), got {value!r}.")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"--calibration_confidence must be in (0, 1) (e.g. 0.95), got "
                         f"{confidence!r}.")
    if halting_rule == "certified" and certified_risk == "drop":
        if not exits.get(method).certifies_drop:
            raise ValueError(f"--certified_risk=drop certifies DACT's halting shift and learned "
                             f"score; --method={method} certifies "
                             "--certified_risk=disagreement.")
        if max_drop is None:  # a value outside (0, 1) is refused above
            raise ValueError("--certified_risk=drop bounds the drop by --calibration_max_drop: "
                             "give it a value in (0, 1) (0.01: one point).")
    if halting_rule == "certified" and not exits.get(method).certified_grid(2):
        raise ValueError(f"--halting_rule=certified certifies an exit threshold; "
                         f"--method={method} has none.")


def rows_source(data_config):
    """`calibrate`'s `rows_source` for a `DataConfig`'s calibration rows."""
    from dact_tf.data import tasks

    return (tasks.calibration_source(data_config)
            or (KEPT_APART if data_config.calibration_share else SHARED))


def _note_source(result, model, source):
    """Writes where the calibration rows came from (a file) into this call's certificates,
    in `result` and in the model's (a kept earlier certificate keeps its own)."""
    if source in (KEPT_APART, SHARED):
        return  # the certificates say so already
    made = {"compute_target": result.get("certificate"),
            "halting": (result.get("halting") or {}).get("certificate")}
    certificates = dict(model.certificates or {})
    for kind, certificate in made.items():
        if certificate:
            certificate["calibration_rows"] = source
            certificates[kind] = certificate
    model.certificates = certificates or None


def calibrate(model, selection, rows, *, target_blocks=None, pass_through="auto",
              metric_task=None, reference=None, max_drop=0.01,
              confidence=risk_bounds.DEFAULT_CONFIDENCE, max_disagreement=None,
              rows_source=KEPT_APART, verbose=1):
    """Calibrates a trained model's exit on held-out rows, with certificates.

    A compute target and a certified halting mode together certify on two
    random halves of `rows` (`split_rows`): the halting certificate is on
    the model the target's shift made, and rows that chose that shift
    cannot certify it again.

    Args:
        model: a trained `DactClassifier`.
        selection: `(features, labels)` batches that may also have picked
            the best epoch (the target's shift and pass-through are found on
            them).
        rows: `(features, labels)` batches kept apart for the certificates.
        target_blocks: DACT: the mean blocks to aim at, or None (no target).
        pass_through: as for `dact_tf.calibration.halting_bias.calibrate_halting_bias`.
        metric_task: the metric reported (see `dact_tf.evaluation.analysis.task_metrics`).
        reference: the plain full-depth `DactClassifier` the cost of the
            target is measured against, or None (the model's own full
            depth before the shift; recorded in the certificate).
        max_drop: float, the certified bound on that cost.
        confidence: float in (0, 1), of each certificate.
        max_disagreement: float: certify a halting mode (`--halting_rule=
            certified`) with this bound on P(early != full depth), or a
            risk (`halting_risk`: e.g. a regression score's mean distance
            from full depth); None: none.
        rows_source: what `rows` are, recorded in every certificate:
            `KEPT_APART` (held out and seen by no other choice), `SHARED`
            (the selection rows themselves) or a file's description
            (`rows_source(data_config)`); `SHARED` whenever `selection` is `rows`.
        verbose: 0 or 1: print what each certificate says (a target that is
            not met, or a certificate that cannot be given, is printed
            always).

    Returns:
        The dict `calibration.json` holds: the compute target's result
        (`dact_tf.calibration.certify.certify_compute_target`, with
        `holdout_layers_executed`, the mean blocks on `selection`) and,
        with a certified halting mode, `halting` (`certify_halting`'s).
        (`calibrate_drop`: one certificate on the drop over both knobs.)
    """
    if target_blocks is not None and max_drop is not None:
        certify.check_max_drop(max_drop, confidence)  # before the model changes
    rows_source = SHARED if selection is rows else rows_source
    result, shared = {}, rows_source == SHARED
    target_rows = halting_rows = rows
    if target_blocks is not None and max_disagreement is not None and not shared:
        # The halting certificate is on the model the target's shift made, and that shift
        # was chosen on the target's rows: each certificate gets its own half of the rows.
        target_rows, halting_rows = split_rows(rows)
    kept_target = (model.certificates or {}).get("compute_target") or {}
    if target_blocks is not None or kept_target.get("knob", "halting_bias_shift") != (
            "halting_bias_shift"):
        # A new target starts from the trained biases; so does a new halting mode after a
        # certified drop, whose shift was certified with the threshold it replaces.
        undo_shift(model)
    if (target_blocks is not None
            and getattr(model.exit_criterion, "halting_rule", None) == "certified"):
        # A new shift voids the halting certificate: back to the proven rule (the
        # target is searched and certified under it; a halting mode is certified anew).
        model.configure_exit(halting_rule="tight", halting_slack=0.0)
    # What `compute_target` will hold: the kept one, unless a new target replaces it.
    target_record = (model.certificates or {}).get("compute_target")
    if target_blocks is not None and max_drop is None:  # no bound asked for: no certificate
        result = halting_bias.calibrate_halting_bias(
            model, selection, target_blocks, max_metric_drop=None, metric_task=metric_task,
            pass_through=pass_through, verbose=verbose)
        # Nothing certified; the shift is recorded so that a new calibration undoes it.
        result["certificate"] = None
        target_record = {"kind": "compute_target", "certified": None,
                         "knob": "halting_bias_shift", "value": result["shift"],
                         "note": "no bound was asked for (no labels)"}
    elif target_blocks is not None:
        reference_preds = None
        if reference is not None:
            reference_preds, _ = certify.reference_predictions(reference, target_rows,
                                                               verbose=verbose)
        result = certify.certify_compute_target(
            model, selection, target_rows, target_blocks, reference_preds,
            max_drop=max_drop, confidence=confidence, metric_task=metric_task,
            pass_through=pass_through, shared=shared, verbose=verbose)
        target_record = result["certificate"]
    if target_blocks is not None:
        result["holdout_layers_executed"] = float(
            halting_statistics(model, selection)["mean_layers_executed"])
        certified = result["certificate"] is None or result["certificate"]["certified"]
        _say(target_message(result), always=result["limited"] or not certified,
             verbose=verbose)
    if max_disagreement is not None:
        # The selection rows (apart from the certificate's) may fit the method's
        # grid (DACT: a learned consistency score); shared rows may not.
        halting = certify.certify_halting(model, halting_rows, max_disagreement, confidence,
                                          shared=shared, verbose=verbose,
                                          fit_dataset=None if shared else selection)
        result["halting"] = halting
        _say(f"Certified halting ({halting['knob']}={halting['value']:g}, "
             f"{halting['mean_layers_executed']:.2f} blocks on the calibration rows): "
             + certify.describe(halting["certificate"]),
             always=not halting["certificate"]["certified"], verbose=verbose)
    model.certificates = {
        key: value for key, value in (
            ("compute_target", target_record),
            ("halting", (result["halting"]["certificate"] if "halting" in result else
                         None if target_blocks is not None
                         else (model.certificates or {}).get("halting"))),
        ) if value} or None
    _note_source(result, model, rows_source)
    return result


def split_rows(rows):
    """Two disjoint halves of the `(features, labels)` batches `rows`, chosen at random.

    A row goes to the second half when a uniform draw seeded by its
    position (and `SPLIT_SEED`) is below one half: the split is the same on
    every call and never reads the rows' content, so a random sample gives
    two random samples. Each half is re-batched (padded to its longest row)
    at the batch size of `rows`.

    Returns:
        `(first, second)`, two `tf.data.Dataset`s of `(features, labels)`.
    """
    import tensorflow as tf

    batch_size = int(tf.shape(tf.nest.flatten(next(iter(rows)))[0])[0])

    def half(second):
        def keep(index, row):
            draw = tf.random.stateless_uniform([], seed=tf.stack([index, SPLIT_SEED]))
            return (draw < 0.5) == second
        return (rows.unbatch().enumerate().filter(keep).map(lambda index, row: row)
                .padded_batch(batch_size))

    return half(False), half(True)


def calibrate_drop(model, selection, rows, *, reference=None, max_drop=0.01,
                   confidence=risk_bounds.DEFAULT_CONFIDENCE, metric_task=None,
                   rows_source=KEPT_APART, verbose=1):
    """`calibrate`'s certified drop (`--certified_risk=drop`): one certificate, both knobs.

    DACT: the halting shift and the learned score's threshold are chosen
    together for the fewest blocks whose accuracy drop against `reference`
    (a regressor: its mean absolute error above the reference's, per score
    range) is certified at most `max_drop`
    (`dact_tf.calibration.certified_drop.certify_drop_halting`, whose
    result this returns, with `holdout_layers_executed`). The arguments
    are `calibrate`'s; the certificate replaces the model's others. Where
    nothing is certified, a model calibrated before keeps that calibration
    (its exit, shift and certificates; `result["kept"]`), and a model never
    calibrated keeps its trained halting under its proven rule.
    """
    if max_drop is None:
        raise ValueError("A certified drop needs its bound: max_drop (0.01: one point) and "
                         "labelled rows.")
    certify.check_max_drop(max_drop, confidence)  # before the model changes
    previous_exit = model.exit_criterion.copy()
    previous_certificates = copy.deepcopy(model.certificates)
    model.configure_exit(halting_rule="tight", halting_slack=0.0)  # a new choice voids the old
    undone = undo_shift(model)
    rows_source = SHARED if selection is rows else rows_source
    result = certified_drop_lib.certify_drop_halting(
        model, selection, rows, reference=reference, max_drop=max_drop, confidence=confidence,
        metric_task=metric_task, shared=rows_source == SHARED,
        kept=(undone, previous_exit) if previous_certificates else None, verbose=verbose)
    result["holdout_layers_executed"] = float(
        halting_statistics(model, selection)["mean_layers_executed"])
    _say(certified_drop_lib.message(result), always=not result["certificate"]["certified"],
         verbose=verbose)
    if result["kept"]:  # the previous calibration and its certificates stand
        model.certificates = previous_certificates
        return result
    model.certificates = {"compute_target": result["certificate"]}
    _note_source(result, model, rows_source)
    return result


def undo_shift(model):
    """Moves the halting biases back by the shift the model's compute-target certificate
    records, so that a new target or drop is calibrated from the trained biases rather than
    on top of the last calibration (a shift adds to the biases it finds). The leading
    blocks that pass their budget on keep doing so. Returns the shift undone (0.0: none
    recorded)."""
    certificate = (model.certificates or {}).get("compute_target") or {}
    shift = certificate.get("shift", certificate.get("value")
                            if certificate.get("knob") == "halting_bias_shift" else None)
    if not shift:
        return 0.0
    certify.apply_shift(model, -float(shift), model.encoder.heads.passed_blocks)
    model.certificates = {k: v for k, v in model.certificates.items()
                          if k != "compute_target"} or None
    return float(shift)


def _say(line, always, verbose):
    # stderr: stdout stays for what a command prints as its result (JSON).
    if always or verbose:
        print(line, file=sys.stderr)


def target_message(result):
    """One line: where the calibration to a target landed, and what is certified."""
    certificate = result["certificate"]
    if certificate is None:
        return (f"Calibrated to {result['mean_layers_executed']:.2f} blocks (target "
                f"{result['target_blocks']:g}), with no bound on its cost.")
    line = (f"Calibrated to {result['mean_layers_executed']:.2f} blocks on the calibration rows "
            f"(target {result['target_blocks']:g}")
    if result["limited"]:
        line += (f", which needs {result['target_shift_layers_executed']:.2f}: the certified "
                 "bound stopped it short")
    passed = result.get("pass_through", 0)
    if passed + 1 > result["target_blocks"] + halting_bias.DEFAULT_TOLERANCE:
        line += (f"; out of reach: with --pass_through={passed} every row runs at least "
                 f"{passed + 1} blocks")
    line += f"); {result['metric_name']} {result['metric']:.4f} "
    line += f"against the full-depth model's {result['reference_metric']:.4f}. "
    return line + "Cost " + certify.describe(certificate)
