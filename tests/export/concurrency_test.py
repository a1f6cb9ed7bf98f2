"""One loaded SavedModel served from 8 threads: same answers, flat memory.

TF Serving (and any Python server with a thread pool) calls one loaded
SavedModel from many threads at once. The early-exit signature runs a
`tf.while_loop` that compacts each batch as examples halt, so a race
between concurrent calls (shared state in the loop, a kernel that caches
per-shape buffers, a resource read out of order) would show as a wrong
answer or a wrong `layers_executed` for some request, or as memory that grows
with the number of requests.

The test loads `plain_export` (the tiny 4-block model of `conftest.py`, whose
exits vary per example) with `tf.saved_model.load`, builds a fixed set of
requests of mixed batch size, padded width and real lengths, answers them
one by one on the main thread, then answers them again from 8 threads in a
shuffled order (mixing `serving_default` and `full_depth` calls), and
compares.
"""

import concurrent.futures
import gc
import os
import threading

import numpy as np
import pytest
import tensorflow as tf

from tests.export.conftest import MAX_LEN
from tests.export.conftest import NUM_LAYERS
from tests.export.conftest import int32_features

NUM_REQUESTS = 2000
MAX_BATCH = 8
NUM_THREADS = 8
THREADED_PASSES = 3
FULL_DEPTH_EVERY = 4  # Threaded passes also call `full_depth` on 1 request in 4.
# RSS may grow this much from the end of the first threaded pass (the
# warm-up: the executor's threads and glibc's per-thread malloc arenas are
# created there) to the end of the last. Measured on the tiny model: +5 MB
# during the first pass, then within +-2 MB. The 2 passes in between make
# 5000 calls: a leak of 4 KiB per call would add 20 MB (checked by hand: a
# 4 KiB buffer kept per call grew RSS by 16.5 MB over 4000 calls).
RSS_GROWTH_BOUND_MB = 16.0


def rss_mb():
    """This process's resident set size in MB, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def make_requests(num, seed=0):
    """`num` requests of mixed batch size (1..8) and padded width (2..MAX_LEN).

    Each request is a dict of int32 arrays `[batch, width]`. Within a
    request the real lengths vary (`random_features`: 2..width tokens, the
    rest padding), so the widest row is often shorter than the width and
    trailing columns are padding only.
    """
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(num):
        batch = int(rng.integers(1, MAX_BATCH + 1))
        width = int(rng.integers(2, MAX_LEN + 1))
        requests.append(int32_features(batch, seed=seed * num + i, seq_len=width))
    return requests


def call(fn, request):
    """Runs signature `fn` on one request; returns numpy outputs."""
    out = fn(**{k: tf.constant(v) for k, v in request.items()})
    return {k: v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def served(plain_export):
    """The loaded export's signatures, the requests, the jobs and answers.

    A job is `(signature, request index)`: every request with
    `serving_default`, one in `FULL_DEPTH_EVERY` with `full_depth` too.
    The reference answers (a dict job -> outputs) are computed
    single-threaded, one job at a time, on this thread.
    """
    loaded = tf.saved_model.load(plain_export)
    fns = {key: loaded.signatures[key] for key in ("serving_default", "full_depth")}
    requests = make_requests(NUM_REQUESTS)
    jobs = [("serving_default", i) for i in range(len(requests))]
    jobs += [("full_depth", i) for i in range(0, len(requests), FULL_DEPTH_EVERY)]
    expected = {(key, i): call(fns[key], requests[i]) for key, i in jobs}
    return loaded, fns, requests, jobs, expected


def test_requests_are_mixed(served):
    """The request set really mixes sizes, padding and exit depths."""
    _, _, requests, _, expected = served
    batches = [len(r["token_ids"]) for r in requests]
    widths = [r["token_ids"].shape[1] for r in requests]
    assert set(batches) == set(range(1, MAX_BATCH + 1))
    assert set(widths) == set(range(2, MAX_LEN + 1))
    # Trailing padding-only columns in some requests, none in others.
    longest = [int(r["padding_mask"].sum(axis=1).max()) for r in requests]
    assert any(n < w for n, w in zip(longest, widths))
    assert any(n == w for n, w in zip(longest, widths))
    layers = [
        expected["serving_default", i]["layers_executed"] for i in range(len(requests))
    ]
    flat = np.concatenate(layers)
    assert len(np.unique(flat)) >= 2
    assert (flat < NUM_LAYERS).any()
    # Batches in which examples exit at different blocks (the loop compacts).
    mixed = sum(len(np.unique(x)) >= 2 for x in layers if len(x) > 1)
    assert mixed >= NUM_REQUESTS // 10, mixed


def test_single_threaded_answers_are_consistent(served):
    """Early exit predicts like full depth; full depth runs every block."""
    _, _, _, jobs, expected = served
    for key, i in jobs:
        if key != "full_depth":
            continue
        full, early = expected[key, i], expected["serving_default", i]
        np.testing.assert_array_equal(early["predictions"], full["predictions"])
        np.testing.assert_array_equal(full["layers_executed"], NUM_LAYERS)
        assert full["probabilities"].shape == early["probabilities"].shape


def test_eight_threads_answer_like_one_and_memory_stays_flat(served):
    """Thousands of interleaved concurrent requests: identical answers, flat RSS.

    Exact equality, probabilities included: a request is the same shapes
    and values whichever thread runs it, and TensorFlow's CPU kernels
    split their work by shape and the (fixed) size of the intra-op thread
    pool, not by which threads are free, so the float sums are done in the
    same order. A tolerance would hide a race that mixes two requests' rows
    slightly (e.g. one example's answer read from a neighbour's row after
    compaction); if some future kernel is legitimately order-dependent under
    load, this is the assertion to revisit (the differences would then be
    ~1e-7, not a changed prediction).
    """
    _, fns, requests, jobs, expected = served
    lock = threading.Lock()
    in_flight = [0, 0]  # [now, most seen]

    def work(job):
        key, i = job
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            return call(fns[key], requests[i])
        finally:
            with lock:
                in_flight[0] -= 1

    def threaded_pass(seed):
        order = np.random.default_rng(seed).permutation(len(jobs))
        with concurrent.futures.ThreadPoolExecutor(NUM_THREADS) as pool:
            futures = [(jobs[j], pool.submit(work, jobs[j])) for j in order]
            return [(job, f.result()) for job, f in futures]

    rss = []
    for p in range(THREADED_PASSES):
        results = threaded_pass(seed=p)
        for job, got in results:
            want = expected[job]
            assert sorted(got) == sorted(want)
            for name in want:
                np.testing.assert_array_equal(
                    got[name], want[name], err_msg=f"pass {p}, job {job}, {name}"
                )
        del results
        gc.collect()
        rss.append(rss_mb())
    assert in_flight[1] >= 2, "The calls never overlapped."
    # The first threaded pass is the warm-up (thread pool, per-thread
    # allocator arenas); memory must not grow over the following passes.
    growth = rss[-1] - rss[0]
    assert growth < RSS_GROWTH_BOUND_MB, (
        f"RSS after each threaded pass (MB): {[round(v, 1) for v in rss]}"
    )
