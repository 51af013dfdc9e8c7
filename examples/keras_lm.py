"""An LSTM language model in Keras 3 whose output layer trains with sampled softmax.

The model of the classic question (``Embedding -> LSTM(return_sequences=True) ->
Dense(V, activation="softmax")``) with its last layer replaced by ``SampledSoftmax`` and
``loss=head.loss``; nothing else changes. ``fit`` trains on ordinary ``(tokens, next_tokens)``
arrays with the sampled loss; ``evaluate`` reports the exact full-softmax loss, printed as
validation perplexity against the unigram baseline. Runs on any Keras backend
(``KERAS_BACKEND=tensorflow|jax|torch``).

    python examples/keras_lm.py data/wikitext-2 [--minutes 3] [--num-sampled 1024]
"""

from __future__ import annotations

import argparse
import math
import time

import keras
import numpy as np

from sampled_softmax.apps.corpus import read_corpus
from sampled_softmax.keras import SampledSoftmax


class TimeBudget(keras.callbacks.Callback):
    """Stops ``fit`` once the training time budget (or ``max_steps``) is spent."""

    def __init__(self, seconds: float, max_steps: int | None = None):
        super().__init__()
        self.seconds, self.max_steps = seconds, max_steps

    def on_train_begin(self, logs=None):
        self.start, self.steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if time.perf_counter() - self.start > self.seconds or (self.max_steps and self.steps >= self.max_steps):
            self.model.stop_training = True


def windows(ids, length):
    n = (ids.size - 1) // length
    return ids[: n * length].reshape(n, length).astype("int32"), ids[1: n * length + 1].reshape(n, length).astype("int32")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", help="directory with train.txt and valid.txt (e.g. data/wikitext-2)")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (default: the time budget only)")
    ap.add_argument("--num-sampled", type=int, default=1024)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=35)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--valid-windows", type=int, default=200)
    args = ap.parse_args(argv)

    keras.utils.set_random_seed(0)
    corpus = read_corpus(args.corpus)
    V = corpus.vocab_size
    x, y = windows(corpus.train, args.seq_len)
    xv, yv = windows(corpus.valid, args.seq_len)
    xv, yv = xv[: args.valid_windows], yv[: args.valid_windows]

    head = SampledSoftmax(V, num_sampled=args.num_sampled, seed=0)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(V, args.embed),
        keras.layers.LSTM(args.hidden, return_sequences=True),
        head,  # was: keras.layers.Dense(V, activation="softmax")
    ])
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=head.loss)  # was: "sparse_categorical_crossentropy"

    before = model.evaluate(xv, yv, batch_size=args.batch, verbose=0)
    budget = TimeBudget(60 * args.minutes, args.max_steps)
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=1000, shuffle=True, verbose=0, callbacks=[budget])
    seconds = time.perf_counter() - start
    after = model.evaluate(xv, yv, batch_size=args.batch, verbose=0)
    print(f"{corpus.name}: V={V}, backend {keras.backend.backend()}, {budget.steps} steps in {seconds:.0f} s "
          f"({budget.steps / seconds:.1f} steps/s)")
    print(f"full-softmax validation perplexity: {math.exp(before):.1f} -> {math.exp(after):.1f} "
          f"(unigram baseline {corpus.unigram_perplexity():.1f})")
    probs = model.predict(xv[:1], verbose=0)
    print(f"predict: {probs.shape} probabilities, rows sum to {float(np.mean(probs.sum(-1))):.4f}")
    return math.exp(after), corpus.unigram_perplexity()


if __name__ == "__main__":
    main()
