"""The certified study's promise check (`benchmarks/promise_check.py`)."""

import csv

import pytest

from benchmarks import promise_check

SIDE_KEYS = ("task", "method", "knob", "seed", "metric_name", "metric", "mean_layers_executed")


def _write(path, keys, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def _side_row(task, method, seed, metric, blocks, knob=""):
    return dict(task=task, method=method, knob=knob, seed=str(seed), metric_name="accuracy",
                metric=str(metric), mean_layers_executed=str(blocks))


def test_a_groups_sweep_keeps_only_its_own_task_and_seed(tmp_path):
    # study.py writes every group of its output folder into each group's study.csv: an
    # STS-B seed-1 static point there must not become an SST-2 seed-1 baseline.
    group_dir = tmp_path / "sst2" / "seed1"
    group_dir.mkdir(parents=True)
    _write(group_dir / "study.csv", SIDE_KEYS, [
        _side_row("sst2", "full", 1, 0.88, 6.0),
        _side_row("sst2", "deebert", 1, 0.87, 2.9, knob="0.3"),
        _side_row("sst2", "static", 0, 0.80, 3.0, knob="3"),
        _side_row("stsb", "static", 1, 0.83, 3.0, knob="3"),
        _side_row("sst2", "pabee", 1, 0.86, 3.5, knob="2"),
    ])
    sweeps = tmp_path / "sweeps.csv"
    # An older group's rows are kept; this group's stale rows of a method it measured again
    # are replaced, and those of a method it did not train this time (static) are kept.
    _write(sweeps, promise_check.SWEEP_KEYS, [
        dict(task="mrpc", seed="0", method="pabee", knob="3", metric_name="f1",
             metric="0.82", mean_blocks="3.1"),
        dict(task="sst2", seed="1", method="static", knob="3", metric_name="accuracy",
             metric="0.81", mean_blocks="3.0"),
        dict(task="sst2", seed="1", method="pabee", knob="3", metric_name="accuracy",
             metric="0.84", mean_blocks="4.0"),
    ])
    out = promise_check.sweep_points(str(sweeps), [{"label": "sst2", "seed": 1,
                                                     "dir": str(group_dir)}])
    assert sorted(out[("sst2", 1)]) == [("deebert", 2.9, 0.87), ("pabee", 3.5, 0.86),
                                        ("static", 3.0, 0.81)]
    assert out[("mrpc", 0)] == [("pabee", 3.1, 0.82)]
    assert set(out) == {("sst2", 1), ("mrpc", 0)}
    with open(sweeps, newline="") as f:
        kept = [(r["task"], r["seed"], r["method"]) for r in csv.DictReader(f)]
    assert sorted(kept) == [("mrpc", "0", "pabee"), ("sst2", "1", "deebert"),
                            ("sst2", "1", "pabee"), ("sst2", "1", "static")]


def test_best_at_interpolates_between_points_that_straddle_the_blocks():
    assert promise_check.best_at([(2.0, 0.80), (4.0, 0.90)], 3.0) == pytest.approx(0.85)
    assert promise_check.best_at([(2.0, 0.80), (4.0, 0.90)], 4.0) == 0.90
    assert promise_check.best_at([(3.5, 0.80)], 3.0) is None


def _row(method, mode, blocks, metric, eps=None, certified=None, drop=0.0):
    return dict(method=method, mode=mode, eps=eps, mean_blocks=blocks, metric=metric,
                num_layers=6, target_certified=certified, drop_vs_full=drop)


def test_the_one_point_promise_needs_half_the_blocks_and_a_gap_of_at_most_one_point():
    full = _row("full", "plain", 6.0, 0.8853)
    met = [full, _row("dact", "certified-drop", 1.90, 0.8796, 0.01, True, drop=0.0057),
           _row("dact", "target", 2.80, 0.8850, 0.01, True, drop=0.0003)]
    cells, ok = promise_check._one_point(met)  # the fewest blocks is the one judged
    assert ok and cells[0] == "certified-drop" and cells[1] == "1.90 of 6"
    too_far = [full, _row("dact", "certified-drop", 2.75, 0.8715, 0.01, True, drop=0.0138)]
    assert promise_check._one_point(too_far)[1] is False
    too_slow = [full, _row("dact", "target", 3.20, 0.8853, 0.01, True)]
    assert promise_check._one_point(too_slow)[0][5] == "no"
    uncertified = [full, _row("dact", "target", 2.0, 0.8853, 0.01, False)]
    assert promise_check._one_point(uncertified) == (["not certified"] + ["-"] * 6, False)


def test_equal_blocks_compares_dact_with_each_baseline_at_its_own_blocks():
    dact = _row("dact", "certified", 2.5, 0.89, 0.01)
    group = [dact, _row("deebert", "certified", 2.0, 0.87, 0.01),
             _row("deebert", "certified", 3.0, 0.90, 0.01)]
    cells = promise_check._equal_blocks(group, [("pabee", 2.4, 0.86), ("static", 3.0, 0.85)])
    assert cells[:2] == ["2.50", "0.8900"]
    assert cells[2] == "0.8850"  # DeeBERT halfway between its two points
    assert cells[3] == "0.8600"  # PABEE's sweep point at fewer blocks
    assert cells[4].startswith("- (fewest: 3.00")  # static needs more blocks: not compared
    assert cells[5] == "yes (2 compared)"
    beaten = promise_check._equal_blocks(group, [("pabee", 2.5, 0.95)])
    assert beaten[5] == "**no**"
    assert promise_check._equal_blocks([dact], [])[5] == "no baseline run yet"
    assert promise_check._equal_blocks([dact], [("static", 3.0, 0.85)])[5] == (
        "none reaches these blocks")
