"""What the TensorFlow drop-in's extra work costs against ``tf.nn``, paired in one process (issue 36).

``sampled_softmax.tensorflow.sampled_softmax_loss`` at Table 1's ``V``, ``D``, ``B`` and each
``S``, forward and backward in a ``tf.function`` (graph mode, the same sampler op as ``tf.nn``),
against ``tf.nn.sampled_softmax_loss`` and against itself without each piece of its extra work:

* ``ours``: as shipped. Its step was traced while the vocabulary-order check was pending, and
  the verdict was given before the clock started (what a training run pays after its first
  steps); a repeated row's gradient moved to its first read in place.
* ``ours, order check off``: traced with ``SAMPLED_SOFTMAX_ORDER_CHECK=0`` (no check in the graph).
* ``ours, repeats by segment sum``: the repeated rows summed by a segment sum of the whole
  ``[N + S, D]`` row gradient (the form before issue 36).
* ``ours, repeats not summed``: the row gradient as ``tf.nn``'s, a repeated row listed once per
  read (what Keras 3's optimizers mis-apply): the floor of the sum's cost.

    python -m benchmarks.tf_drop_in [--sampled 100,1000,8192] [--repeats 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from unittest import mock

import numpy as np

from .harness import paired, paired_ratio, summarize
from .loss import TABLE1


def methods(S, *, V=TABLE1["V"], D=TABLE1["D"], B=TABLE1["B"], seed=0):
    import tensorflow as tf

    from sampled_softmax import order_check as OC
    from sampled_softmax import tensorflow as sst
    from sampled_softmax.tensorflow import _rows
    from sampled_softmax.tensorflow import nn as snn

    rng = np.random.default_rng(seed)
    W = tf.Variable(rng.normal(size=(V, D)).astype(np.float32) * 0.05)
    b = tf.Variable(np.zeros(V, np.float32))
    h = tf.constant(rng.normal(size=(B, D)).astype(np.float32))
    # Frequency-ordered (Zipf) labels, as the log-uniform sampler assumes: the check says nothing.
    p = 1.0 / np.arange(1, V + 1)
    y = tf.constant(rng.choice(V, size=(B, 1), p=p / p.sum()))
    tf.random.set_seed(seed)
    summed_on_first, sampled_loss = _rows.summed_on_first, snn.sampled_loss
    variants = {
        "ours, order check off": lambda: mock.patch.dict(os.environ, {"SAMPLED_SOFTMAX_ORDER_CHECK": "0"}),
        "ours, repeats by segment sum": lambda: mock.patch.object(
            _rows, "summed_on_first", lambda d, first, in_place=False: summed_on_first(d, first)),
        "ours, repeats not summed": lambda: mock.patch.object(
            snn, "sampled_loss", lambda *a, ids=None, **k: sampled_loss(*a, **k)),
    }

    def traced(loss_fn, patch=contextlib.nullcontext):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(h)
                loss = tf.reduce_sum(loss_fn(W, b, y, h, S, V))
            return tape.gradient(loss, [W, b, h])

        with patch():
            step()  # traced here, with the variant's code
        return step

    OC.reset()
    out = {"tf.nn": traced(tf.nn.sampled_softmax_loss), "ours": traced(sst.sampled_softmax_loss)}
    out.update({name: traced(sst.sampled_softmax_loss, patch) for name, patch in variants.items()})
    check = OC.order_check("tensorflow", V, "")
    while check.pending:  # the verdict, as after a run's first steps
        out["ours"]()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sampled", default="100,1000,8192")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    for S in (int(s) for s in args.sampled.split(",")):
        steps = methods(S)
        samples = paired(steps, repeats=args.repeats, block=5)
        summary = summarize(samples)
        print(f"S={S}: " + ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in summary.items()))
        print("  " + ", ".join(f"tf.nn / {k} {paired_ratio(samples, 'tf.nn', k):.3f}x" for k in steps if k != "tf.nn"),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
