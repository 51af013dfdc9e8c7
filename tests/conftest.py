import os

import numpy as np
import pytest

# Hypothesis: deterministic and bounded for CI.
try:
    from hypothesis import settings

    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
    settings.load_profile("ci")
except ImportError:  # pragma: no cover
    pass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# JAX sees 4 CPU devices (set before anything imports JAX): the vocabulary-parallel tests shard
# over them. Work placed on one device is unchanged.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_problem(rng, *, V=40, D=6, B=5, T=1, S=8, hits=True, dup_candidates=False):
    """A random float64 problem with sampled values that include accidental hits."""
    W = rng.normal(size=(V, D))
    b = rng.normal(size=V)
    h = rng.normal(size=(B, D))
    y = rng.integers(0, V, size=(B, T))
    cand = rng.choice(V, size=S, replace=dup_candidates)
    if dup_candidates:
        cand[1] = cand[0]
    if hits:
        cand[-1] = y[0, 0]
        cand[-2] = y[min(1, B - 1), -1]
    true_count = rng.uniform(0.05, 3.0, size=(B, T))
    samp_count = rng.uniform(0.05, 3.0, size=S)
    return W, b, y, h, (cand, true_count, samp_count)


def in_batch_problem(seed=0, B=6, C=10, D=4):
    """A float64 in-batch retrieval problem: ``(query, candidates, ids, log_q, masks, weights)``
    with accidental hits (queries 1 and 4 share their positive; an extra negative repeats query
    0's), a repeated query id, and per-query masks (``masks``: ``query_ids``, ``score_mask``,
    ``excluded_ids``)."""
    rng = np.random.default_rng(seed)
    q, c = rng.normal(size=(B, D)), rng.normal(size=(C, D))
    ids = rng.permutation(40)[:C]
    ids[4], ids[8] = ids[1], ids[0]
    log_q = np.log(rng.uniform(0.01, 0.9, size=C))
    masks = dict(query_ids=np.array([0, 1, 2, 0, 4, 5]), score_mask=rng.uniform(size=(B, C)) > 0.2,
                 excluded_ids=np.array([[ids[5], -1], [-1, -1], [ids[9], ids[3]], [-1, -1], [-1, -1], [ids[2], -1]]))
    return q, c, ids, log_q, masks, rng.uniform(0.1, 2.0, size=B)


def central_differences(f, arrays, step=1e-6):
    """``d f / d a`` for each array ``a`` of ``arrays`` by central differences (``f`` takes the
    arrays, in order, and returns a float)."""
    grads = []
    for which, x in enumerate(arrays):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args = [a.copy() for a in arrays]
            args[which][idx] += step
            up = f(*args)
            args[which][idx] -= 2 * step
            num[idx] = (up - f(*args)) / (2 * step)
        grads.append(num)
    return grads
