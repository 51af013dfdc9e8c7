"""A Keras ``fit`` step with the fused table optimizer (``SampledSoftmax(table_optimizer=RowAdam())``)
against ``V``, against the same layer unfused (the model's optimizer: ``LazyAdam``) and against
``Dense(V, activation="softmax")``, on each Keras backend.

The model keeps everything but the output layer small and independent of ``V``
(``Embedding(10k, D) -> Dense(D, relu) -> output`` over ``B x T`` tokens), so that what grows
with ``V`` is the output layer's step. Each backend runs in its own subprocess (Keras fixes its
backend at import); within one, every method's ``train_on_batch`` is timed in paired rounds.

    python -m benchmarks.keras_table_step [--quick] [--backends tensorflow,jax,torch] [--repeats 5]

Ratios reported: ``fused V=1M / fused V=10k`` (the goal: at most 1.5x), ``unfused V=1M / fused
V=1M``, and ``Dense V=100k / fused V=100k`` (the goal: at least 10x on JAX and PyTorch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

FULL = dict(B=32, T=32, D=128, S=1024, inputs=10_000, small=10_000, large=1_000_000, dense=100_000)
QUICK = dict(B=16, T=16, D=64, S=256, inputs=2_000, small=2_000, large=100_000, dense=20_000)


def _model(shape: dict, V: int, method: str):
    import keras

    from sampled_softmax.keras import LazyAdam, RowAdam, SampledSoftmax

    keras.utils.set_random_seed(0)
    if method == "dense":
        head, loss, optimizer = keras.layers.Dense(V, activation="softmax"), "sparse_categorical_crossentropy", "adam"
    else:
        fused = method == "fused"
        head = SampledSoftmax(V, shape["S"], sampler="uniform", seed=0,
                              table_optimizer=RowAdam(1e-3) if fused else None)
        loss, optimizer = head.loss, keras.optimizers.Adam() if fused else LazyAdam()
    model = keras.Sequential([keras.Input((shape["T"],), dtype="int32"),
                              keras.layers.Embedding(shape["inputs"], shape["D"]),
                              keras.layers.Dense(shape["D"], activation="relu"), head])
    model.compile(optimizer=optimizer, loss=loss)
    return model


def measure(shape: dict, repeats: int) -> dict:
    import numpy as np

    import keras

    from benchmarks import harness

    rng = np.random.default_rng(0)
    x = rng.integers(0, shape["inputs"], (shape["B"], shape["T"])).astype("int32")
    cases = {f"fused V={shape['small']}": (shape["small"], "fused"),
             f"fused V={shape['large']}": (shape["large"], "fused"),
             f"unfused V={shape['large']}": (shape["large"], "unfused"),
             f"fused V={shape['dense']}": (shape["dense"], "fused"),
             f"Dense V={shape['dense']}": (shape["dense"], "dense")}
    steps = {}
    for name, (V, method) in cases.items():
        model = _model(shape, V, method)
        y = rng.integers(0, V, (shape["B"], shape["T"])).astype("int32")
        steps[name] = (lambda model=model, y=y: model.train_on_batch(x, y))
    samples = harness.paired(steps, repeats=repeats, warmup=2)
    ratio = harness.paired_ratio
    return {"backend": keras.backend.backend(), "shape": shape, "samples_s": samples,
            "summary": harness.summarize(samples),
            "large_over_small": ratio(samples, f"fused V={shape['large']}", f"fused V={shape['small']}"),
            "unfused_over_fused": ratio(samples, f"unfused V={shape['large']}", f"fused V={shape['large']}"),
            "dense_over_fused": ratio(samples, f"Dense V={shape['dense']}", f"fused V={shape['dense']}")}


def run(*, quick=False, backends=("tensorflow", "jax", "torch"), repeats=5) -> dict:
    shape = QUICK if quick else FULL
    from benchmarks import harness

    results = harness.per_backend("benchmarks.keras_table_step", shape, backends, ("--repeats", str(repeats)))
    return {"shape": shape, "backends": results}


def format_rows(res: dict) -> list[str]:
    rows = []
    for r in res["backends"]:
        if "skipped" in r:
            rows.append(f"{r['backend']}: skipped: {r['skipped']}")
            continue
        medians = ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in r["summary"].items())
        rows.append(f"{r['backend']}: {medians}")
        rows.append(f"  fused 1M / fused 10k {r['large_over_small']:.2f}x, unfused / fused at 1M "
                    f"{r['unfused_over_fused']:.2f}x, Dense / fused at 100k {r['dense_over_fused']:.1f}x")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backends", default="tensorflow,jax,torch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child), args.repeats)))
        return 0
    res = run(quick=args.quick, backends=tuple(args.backends.split(",")), repeats=args.repeats)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study_results", "keras_table_step.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print("\n".join(format_rows(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
