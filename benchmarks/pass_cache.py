"""A disk cache for the passes that every certified-study point of one model repeats.

Each point of `certified_study` loads its model fresh and calibrates it, and each
calibration traces every block over the held-out rows. The points of one model
also compute the model's own full-depth answers and the `full` reference's
answers again. On a 2-core CPU these passes are most of a point's time (SST-2:
8,000 traced rows), and the answers they give are the same every time: they
depend only on the weights, the model's settings and the rows.

`PassCache` remembers two functions' results for the named datasets of a
group: `analysis.trace_dataset` (every block, the halting values and the exits
under the model's current rule) and `scoring.predict_dataset` at full depth.
The key is a hash of every weight (halting-bias shifts and pass-throughs
included), the model's config (dtype policies; for a trace, the exit
settings too: its exits follow the model's rule), the function and the
split's name. A point's early-exit evaluation is never cached: it always
runs the real loop.

Example:
    with PassCache("runs/certified_study/cache/sst2_1", {"calibration": ds}):
        certify.certify_halting(model, ds, ...)   # traced once, then read back
"""

import hashlib
import json
import os

import numpy as np


def model_fingerprint(model, exit_settings=True):
    """A hash of everything a pass's output depends on in the model itself.

    `exit_settings=False` leaves out the exit criterion's knobs (thresholds,
    rule, learned score, certificates) but keeps its kind: what a full-depth
    pass returns (DACT's `a_N`, a baseline's last head) does not depend on
    them, so the points of one model share it whatever their calibration.
    """
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(str(weight.dtype).encode() + str(weight.shape).encode())
        digest.update(np.ascontiguousarray(weight).tobytes())
    config = dict(model.get_config())
    if exit_settings:
        config["exits"] = model.exit_criterion.summary()
    else:
        config.pop("certificates", None)
        config["method"] = type(model.exit_criterion).__name__
    digest.update(json.dumps(config, sort_keys=True, default=repr).encode())
    return digest.hexdigest()[:24]


class PassCache:
    """Within the `with` block, traces and full-depth predictions of `datasets` are cached.

    Args:
        directory: where the cached arrays go (one `.npz` per pass).
        datasets: `{split name: tf.data.Dataset}`, the exact objects the
            calibration and scoring code is given; other datasets pass through
            uncached.
    """

    def __init__(self, directory, datasets):
        self.directory = directory
        self.names = {id(ds): name for name, ds in datasets.items()}
        self.hits = self.misses = 0
        self._modules = self._saved = None

    def __enter__(self):
        from dact_tf.evaluation import analysis
        from dact_tf.evaluation import scoring

        self._modules = analysis, scoring
        self._saved = (analysis.trace_dataset, scoring.predict_dataset)
        trace, predict = self._saved

        def trace_dataset(model, dataset, verbose=0):
            return self._cached("trace", model, dataset, lambda: trace(model, dataset, verbose))

        def predict_dataset(model, dataset, full_depth=False, verbose=0, max_layers=None):
            def run():
                return predict(model, dataset, full_depth=full_depth, verbose=verbose,
                               max_layers=max_layers)
            if not full_depth or max_layers is not None:
                return run()
            return self._cached("full_depth", model, dataset, run)

        analysis.trace_dataset, scoring.predict_dataset = trace_dataset, predict_dataset
        return self

    def __exit__(self, *exc):
        analysis, scoring = self._modules
        analysis.trace_dataset, scoring.predict_dataset = self._saved
        return False

    def _cached(self, kind, model, dataset, run):
        name = self.names.get(id(dataset))
        if name is None:
            return run()
        key = model_fingerprint(model, exit_settings=kind == "trace")
        path = os.path.join(self.directory, f"{kind}_{name}_{key}.npz")
        if os.path.exists(path):
            self.hits += 1
            with np.load(path, allow_pickle=False) as stored:
                outputs = {k[4:]: stored[k] for k in stored.files if k.startswith("out_")}
                labels = stored["labels"] if "labels" in stored.files else None
            return outputs, labels
        self.misses += 1
        outputs, labels = run()
        os.makedirs(self.directory, exist_ok=True)
        arrays = {f"out_{k}": v for k, v in outputs.items()}
        if labels is not None:
            arrays["labels"] = labels
        partial = path + ".partial.npz"
        np.savez(partial, **arrays)
        os.replace(partial, path)  # a killed run leaves no half-written entry
        return outputs, labels
