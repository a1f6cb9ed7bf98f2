"""The accuracy promises of the certified study, checked per task and seed from its rows.

Two questions, asked of every group (task, seed) that `certified_study.py` measured:

1. **One certified point at half the blocks.** Among DACT's points whose certificate bounds
   the cost against the separately fine-tuned `full` model at EPS = 1 % (`target` and
   `certified-drop`, certified), the one with the fewest evaluation blocks: does it run at
   most half the blocks, and is it within one point of `full` on the evaluation set, both in
   the task's metric and in the certified quantity (the accuracy drop; for a regressor the
   mean excess absolute error as a share of the score range)?
2. **Above the baselines at equal blocks.** DACT's certified halting at 1 % disagreement
   against DeeBERT, PABEE and static truncation at the same mean blocks. A baseline's value
   at `b` blocks is the best it reaches with at most `b` blocks among its own measured points
   in the group (as trained, certified at every EPS, or static truncation), or on the segment
   between two of its points that straddle `b` (mixing two exit settings at random reaches
   any point of that segment). "-" when the baseline has no point at `b` blocks or fewer.

Every figure is read from the study's rows; nothing is re-measured here.
"""

import csv
import os

EPS = 0.01
BASELINES = ("deebert", "pabee", "static")
SWEEP_KEYS = ("task", "seed", "method", "knob", "metric_name", "metric", "mean_blocks")


def sweep_points(path, groups):
    """The baselines' knob sweeps of the groups, kept in the CSV `path`.

    A group trained by `benchmarks/study.py` into its own directory (as
    `study_group.sh` does) has there a `study.csv` with every knob the study
    measured on the same models and evaluation set (DeeBERT's entropy
    thresholds, PABEE's patiences, static truncation). Its rows of the
    group's task and seed (the file lists every group trained into the same
    study folder; the group's label is its task) replace the group's rows of
    the same methods in `path`, which keeps them for runs without the models;
    a method the file lacks keeps its stored rows (a later run that trained
    only some of the baselines again).

    Args:
        path: the sweeps CSV (read, then rewritten when a group adds rows).
        groups: the groups of this run (`{"label", "seed", "dir"}` dicts).

    Returns:
        `{(task, seed): [(method, blocks, metric), ...]}`.
    """
    rows = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    changed = False
    for group in groups:
        side = os.path.join(group["dir"], "study.csv")
        if not os.path.exists(side):
            continue
        key = (group["label"], str(group["seed"]))
        with open(side, newline="") as f:
            found = [{"task": r["task"], "seed": r["seed"],
                      "method": r["method"], "knob": r["knob"],
                      "metric_name": r["metric_name"], "metric": r["metric"],
                      "mean_blocks": r["mean_layers_executed"]}
                     for r in csv.DictReader(f)
                     if r["method"] in BASELINES and (r["task"], r["seed"]) == key]
        measured = {r["method"] for r in found}
        rows = [r for r in rows
                if (r["task"], r["seed"]) != key or r["method"] not in measured] + found
        changed = True
    if changed:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, SWEEP_KEYS)
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: tuple(r[k] for k in SWEEP_KEYS[:4])))
    out = {}
    for r in rows:
        out.setdefault((r["task"], int(r["seed"])), []).append(
            (r["method"], float(r["mean_blocks"]), float(r["metric"])))
    return out


def best_at(points, blocks):
    """The best metric reachable with at most `blocks` mean blocks.

    Args:
        points: `(blocks, metric)` pairs of one method's measured settings.
        blocks: float, the compute allowed.

    Returns:
        The largest metric among the points at `blocks` or fewer and the linear
        interpolations at `blocks` between two points that straddle it; None when no point
        runs `blocks` or fewer.

    Example:
    ```python
    best_at([(2.0, 0.80), (4.0, 0.90)], 3.0)  # 0.85
    ```
    """
    candidates = [m for b, m in points if b <= blocks + 1e-9]
    for b1, m1 in points:
        for b2, m2 in points:
            if b1 < blocks < b2:
                candidates.append(m1 + (m2 - m1) * (blocks - b1) / (b2 - b1))
    return max(candidates) if candidates else None


def family(method):
    """A method's family: `"static"` for every static truncation (`static_k3`), else itself."""
    return "static" if method.startswith("static") else method


def _one_point(group):
    """Question 1 for one group: a table row's cells, and whether it is met."""
    full = next((r for r in group if r["method"] == "full"), None)
    candidates = [r for r in group if r["method"] == "dact" and r["eps"] == EPS
                  and r["mode"] in ("target", "certified-drop") and r.get("target_certified")]
    if full is None or not candidates:
        return ["not certified", "-", "-", "-", "-", "-", "-"], False
    best = min(candidates, key=lambda r: r["mean_blocks"])
    gap = full["metric"] - best["metric"]
    cost = best[best.get("check_quantity") or "drop_vs_full"]
    half = best["mean_blocks"] <= best["num_layers"] / 2.0 + 1e-9
    within = gap <= EPS + 1e-9 and cost <= EPS + 1e-9
    met = half and within
    return [best["mode"], f"{best['mean_blocks']:.2f} of {best['num_layers']}",
            f"{best['metric']:.4f} ({full['metric']:.4f})", f"{gap:+.4f}", f"{cost:+.4f}",
            "yes" if half else "no", "**met**" if met else "no"], met


def _equal_blocks(group, sweep):
    """Question 2 for one group: a table row's cells (None without the DACT point)."""
    dact = next((r for r in group if r["method"] == "dact" and r["mode"] == "certified"
                 and r["eps"] == EPS), None)
    if dact is None:
        return None
    blocks = dact["mean_blocks"]
    cells, compared, above = [], 0, True
    for baseline in BASELINES:
        points = [(r["mean_blocks"], r["metric"]) for r in group
                  if family(r["method"]) == baseline]
        points += [(b, m) for method, b, m in sweep if method == baseline]
        if not points:
            cells.append("not run")
            continue
        value = best_at(points, blocks)
        if value is None:
            fewest = min(points)
            cells.append(f"- (fewest: {fewest[0]:.2f} blocks, {fewest[1]:.4f})")
        else:
            cells.append(f"{value:.4f}")
            compared += 1
            above = above and dact["metric"] > value
    verdict = ("no baseline run yet" if cells.count("not run") == len(BASELINES)
               else "none reaches these blocks" if not compared
               else f"yes ({compared} compared)" if above else "**no**")
    return [f"{blocks:.2f}", f"{dact['metric']:.4f}"] + cells + [verdict]


def section(groups, sweeps=None):
    """The Markdown lines of both checks.

    Args:
        groups: `{(task, seed): [row, ...]}`, the certified study's rows by group (as
            `certified_study._groups` returns them).
        sweeps: `{(task, seed): [(method, blocks, metric), ...]}`, the baselines' further
            measured settings (`sweep_points`).

    Returns:
        A list of Markdown lines (a section headed "Promises against `full`").
    """
    lines = [
        "", "## Promises against `full`, per seed", "",
        "Read from the rows above (`benchmarks/promise_check.py` says how). **One certified "
        "point at half the blocks**: DACT's point with the fewest evaluation blocks among "
        "those whose cost against `full` is certified at most 1 % (`target`, `certified-drop`); "
        "*gap*: `full`'s metric less DACT's; *cost*: the certified quantity on the evaluation "
        "set (accuracy drop, or a regressor's mean excess error); *met*: at most half the "
        "blocks, gap and cost both at most one point.", "",
        "| task | seed | mode | blocks | metric (full) | gap | cost | half | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    met_count = {}
    for (task, seed), group in groups.items():
        cells, met = _one_point(group)
        met_count.setdefault(task, []).append(met)
        lines.append(f"| {task} | {seed} | " + " | ".join(cells) + " |")
    lines += ["", "Met: " + ", ".join(f"{task} {sum(m)} of {len(m)} seeds"
                                      for task, m in met_count.items()) + ".", ""]
    lines += [
        "**Above the baselines at equal blocks**: DACT's certified halting at 1 % "
        "disagreement against each baseline's best metric with at most as many blocks "
        "(its measured points in the same group: the rows above and, where the group was "
        "trained by `study_group.sh`, its knob sweep in `results/certified_study_sweeps.csv`; "
        "and the segments between them); *-*: the "
        "baseline has no point at as few blocks (its fewest shown), which does not count "
        "against DACT; *above all*: DACT's metric is above every baseline compared.", "",
        "| task | seed | DACT blocks | DACT metric | DeeBERT | PABEE | static | above all |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, seed), group in groups.items():
        cells = _equal_blocks(group, (sweeps or {}).get((task, seed), []))
        if cells is not None:
            lines.append(f"| {task} | {seed} | " + " | ".join(cells) + " |")
    return lines
