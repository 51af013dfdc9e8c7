"""Which sampler should a new user get? Every sampler on real text with the vocabulary in
frequency, alphabetical and random order, against the full softmax, at equal epochs and at equal
wall-clock: the study behind the defaults (issue 22).

    python -m benchmarks.sampler_study --data ../shared/data [--corpus ptb] [--front torch]
        [--orders frequency,alphabetical,random] [--samplers log_uniform,uniform,unigram,learned_unigram]
        [--num-sampled 64,256,1024] [--draws default] [--epochs 3] [--seconds 0] [--lr 1e-3]
        [--head-lr-scale 1] [--keras-adam summed] [--json out.json]
    KERAS_BACKEND=jax python -m benchmarks.sampler_study --data ../shared/data --front keras ...

The setting is seed 003's (the user who swaps ``Dense(V, "softmax")`` for ``SampledSoftmax``): the
first ``--tokens`` (120,000) tokens of the training split, the vocabulary their distinct words
(held-out words outside it become ``<unk>``), ``Embedding(V, 64) -> LSTM(128) -> head``, Adam
(``--lr``, 1e-3; ``--head-lr-scale k`` gives the PyTorch output layer ``k`` times it), windows of 20 tokens,
batches of 32, ``--epochs`` epochs (or, with ``--seconds T``, as many steps as ``T`` seconds
allow); the held-out perplexity is the exact full softmax's on the first ``--valid`` tokens of the
validation split. The vocabulary orders: ``frequency`` (most frequent first, what log-uniform
assumes), ``alphabetical`` (sorted words) and ``random`` (a seeded permutation). ``--front torch``
trains :class:`sampled_softmax.torch.SampledSoftmax`; ``--front keras`` the Keras layer with
``model.fit`` on the backend ``KERAS_BACKEND`` names (the full softmax there is ``Dense(V,
"softmax")``). Every run starts from the same seed.

On the TensorFlow backend, Keras 3's ``Adam`` squares each entry of a row-sparse gradient
before summing a row's repeats (``sampled_softmax.tensorflow._rows``); the ``Embedding``'s
gradient has repeats in every batch. ``--keras-adam summed`` (the default) sums them first, as
tf.keras 2 did, so every backend trains with the same Adam; ``--keras-adam keras`` is Keras's
own.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from .harness import dump

ORDERS = ("frequency", "alphabetical", "random")
SAMPLERS = ("log_uniform", "uniform", "unigram", "learned_unigram")
SETTING = dict(tokens=120_000, valid=20_000, embed=64, hidden=128, seq_len=20, batch=32, lr=1e-3, head_lr_scale=1.0,
               keras_adam="summed")


def load(corpus_dir: str, order: str, tokens: int, valid: int, seed: int = 0) -> dict:
    """Train and held-out ids with the vocabulary in ``order``; the counts of the train ids."""
    from sampled_softmax.apps.corpus import read_corpus

    corpus = read_corpus(corpus_dir)
    train_words = [corpus.words[i] for i in corpus.train[:tokens]]
    counts: dict[str, int] = {}
    for w in train_words:
        counts[w] = counts.get(w, 0) + 1
    counts.setdefault("<unk>", 0)
    first_seen = list(counts)  # first occurrence order
    if order == "frequency":
        words = sorted(first_seen, key=lambda w: -counts[w])  # stable: ties by first occurrence
    elif order == "alphabetical":
        words = sorted(first_seen)
    elif order == "random":
        words = [first_seen[i] for i in np.random.default_rng(seed).permutation(len(first_seen))]
    else:
        raise ValueError(f"order must be one of {ORDERS}; received {order!r}")
    index = {w: i for i, w in enumerate(words)}
    unk = index["<unk>"]
    held_out = [index.get(corpus.words[i], unk) for i in corpus.valid[:valid]]
    return dict(V=len(words), train=np.array([index[w] for w in train_words], np.int64),
                valid=np.array(held_out, np.int64), counts=np.array([counts[w] for w in words], np.float64))


def unigram_perplexity(data: dict) -> float:
    p = (data["counts"] + 1) / (data["counts"].sum() + data["V"])
    return float(np.exp(-np.mean(np.log(p[data["valid"][1:]]))))


def windows(ids: np.ndarray, length: int):
    n = (ids.size - 1) // length
    return ids[: n * length].reshape(n, length), ids[1: n * length + 1].reshape(n, length)


def _torch_run(data, method, setting, epochs, seconds, seed):
    import torch
    from torch import nn

    from sampled_softmax.torch import (LearnedUnigramSampler, LogUniformSampler, SampledSoftmax, UniformSampler,
                                       UnigramSampler)

    torch.manual_seed(seed)
    V, D, H = data["V"], setting["embed"], setting["hidden"]
    sampler_name, S, draw = method

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(V, D)
            self.lstm = nn.LSTM(D, H, batch_first=True)
            if sampler_name == "full":
                self.out = nn.Linear(H, V)
            else:
                kw = {} if draw == "default" else dict(draw=draw)
                sampler = {"log_uniform": lambda: LogUniformSampler(V, **kw),
                           "uniform": lambda: UniformSampler(V, **kw),
                           "unigram": lambda: UnigramSampler(V, data["counts"], **kw),
                           "learned_unigram": lambda: LearnedUnigramSampler(V, **kw)}[sampler_name]()
                self.out = SampledSoftmax(H, V, S, sampler=sampler)

        def forward(self, x, y):
            h, _ = self.lstm(self.embed(x))
            if isinstance(self.out, nn.Linear):
                return nn.functional.cross_entropy(self.out(h).reshape(-1, V), y.reshape(-1))
            return self.out(h, y).loss

    model = LM()
    # The output layer's parameters in their own group: --head-lr-scale multiplies their rate.
    head = [p for name, p in model.named_parameters() if name.startswith("out.")]
    rest = [p for name, p in model.named_parameters() if not name.startswith("out.")]
    opt = torch.optim.Adam([dict(params=rest), dict(params=head, lr=setting["lr"] * setting["head_lr_scale"])],
                           lr=setting["lr"])
    x, y = (torch.from_numpy(a) for a in windows(data["train"], setting["seq_len"]))
    gen = torch.Generator().manual_seed(seed)
    steps, start = 0, time.perf_counter()
    epoch = 0
    while (seconds and time.perf_counter() - start < seconds) or (not seconds and epoch < epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=gen).split(setting["batch"]):
            opt.zero_grad(set_to_none=True)
            model(x[batch], y[batch]).backward()
            opt.step()
            steps += 1
            if seconds and time.perf_counter() - start >= seconds:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    model.eval()
    xv, yv = (torch.from_numpy(a) for a in windows(data["valid"], setting["seq_len"]))
    with torch.no_grad():
        h, _ = model.lstm(model.embed(xv))
        head = model.out
        logits = head(h) if isinstance(head, nn.Linear) else head.logits(h)
        nll = nn.functional.cross_entropy(logits.reshape(-1, V), yv.reshape(-1)).item()
    return dict(perplexity=math.exp(nll), seconds=elapsed, steps=steps, epochs=epoch)


def _summed_repeats_adam():
    import keras

    class SummedRepeatsAdam(keras.optimizers.Adam):
        """Keras's ``Adam`` with a TensorFlow row-sparse gradient's repeated rows summed first."""

        def update_step(self, gradient, variable, learning_rate):
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                from sampled_softmax.tensorflow._rows import distinct_rows

                if isinstance(gradient, tf.IndexedSlices):
                    rows, values = distinct_rows(gradient)
                    gradient = tf.IndexedSlices(values, rows, gradient.dense_shape)
            return super().update_step(gradient, variable, learning_rate)

    return SummedRepeatsAdam


def _keras_run(data, method, setting, epochs, seconds, seed):
    import keras

    from sampled_softmax.keras import SampledSoftmax

    keras.utils.set_random_seed(seed)
    V = data["V"]
    sampler_name, S, draw = method
    if sampler_name == "full":
        head, loss = keras.layers.Dense(V, activation="softmax"), "sparse_categorical_crossentropy"
    else:
        kw = dict(unigrams=data["counts"]) if sampler_name == "unigram" else {}
        if draw != "default":
            kw["draw"] = draw
        head = SampledSoftmax(V, num_sampled=S, sampler=sampler_name, seed=seed, **kw)
        loss = head.loss
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(V, setting["embed"]),
                              keras.layers.LSTM(setting["hidden"], return_sequences=True), head])
    adam = _summed_repeats_adam() if setting["keras_adam"] == "summed" else keras.optimizers.Adam
    model.compile(optimizer=adam(setting["lr"]), loss=loss)
    x, y = (a.astype("int32") for a in windows(data["train"], setting["seq_len"]))
    xv, yv = (a.astype("int32") for a in windows(data["valid"], setting["seq_len"]))
    steps = [0]

    class Budget(keras.callbacks.Callback):
        """Counts steps; with ``seconds``, stops ``fit`` once they are spent."""

        def on_train_batch_end(self, batch, logs=None):
            steps[0] += 1
            if seconds and time.perf_counter() - start >= seconds:
                self.model.stop_training = True

    start = time.perf_counter()
    history = model.fit(x, y, batch_size=setting["batch"], epochs=10_000 if seconds else epochs, shuffle=True,
                        verbose=0, callbacks=[Budget()])
    elapsed = time.perf_counter() - start
    nll = model.evaluate(xv, yv, batch_size=256, verbose=0)
    steps = steps[0]
    return dict(perplexity=math.exp(nll), seconds=elapsed, steps=steps, epochs=len(history.history["loss"]))


def run(corpus_dir: str, *, front="torch", orders=ORDERS, samplers=SAMPLERS, num_sampled=(64, 256, 1024),
        draws=("default",), epochs=3, seconds=0.0, setting=SETTING, seed=0, log=print) -> dict:
    """One row per (order, method); the full softmax once per order (its result does not depend
    on the order but for the initialisation's assignment of rows)."""
    train = _torch_run if front == "torch" else _keras_run
    results = []
    for order in orders:
        data = load(corpus_dir, order, setting["tokens"], setting["valid"], seed)
        methods = [("full", None, None)] + [(s, k, d) for s in samplers for k in num_sampled for d in draws]
        for method in methods:
            res = train(data, method, setting, epochs, seconds, seed)
            row = dict(order=order, sampler=method[0], num_sampled=method[1], draw=method[2], **res)
            log(json.dumps(row))
            results.append(row)
    data = load(corpus_dir, "frequency", setting["tokens"], setting["valid"], seed)
    return dict(front=front, setting=setting, epochs=epochs, seconds=seconds, V=data["V"],
                unigram_perplexity=unigram_perplexity(data), results=results)


def table(res: dict) -> str:
    full = {r["order"]: r["perplexity"] for r in res["results"] if r["sampler"] == "full"}
    lines = ["| sampler | S | draw | " + " | ".join(f"{o} (vs full)" for o in full) + " | seconds |",
             "|---" * (4 + len(full)) + "|"]
    keys = sorted({(r["sampler"], r["num_sampled"] or 0, r["draw"] or "") for r in res["results"]},
                  key=lambda k: (k[0] != "full", k))
    for sampler, S, draw in keys:
        rows = {r["order"]: r for r in res["results"]
                if (r["sampler"], r["num_sampled"] or 0, r["draw"] or "") == (sampler, S, draw)}
        cells = [f"{rows[o]['perplexity']:.0f} ({rows[o]['perplexity'] / full[o]:.2f}x)" if o in rows else ""
                 for o in full]
        secs = np.median([r["seconds"] for r in rows.values()])
        lines.append(f"| {sampler} | {S or ''} | {draw} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the folder with ptb/ and wikitext-2/ (../shared/data)")
    ap.add_argument("--corpus", default="ptb")
    ap.add_argument("--front", choices=("torch", "keras"), default="torch")
    ap.add_argument("--orders", default=",".join(ORDERS))
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--num-sampled", default="64,256,1024")
    ap.add_argument("--draws", default="default", help="draw modes; 'default' is the front end's own")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.0, help="train each method this long instead of --epochs")
    ap.add_argument("--tokens", type=int, default=SETTING["tokens"])
    ap.add_argument("--valid", type=int, default=SETTING["valid"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=SETTING["lr"], help="Adam's learning rate")
    ap.add_argument("--head-lr-scale", type=float, default=SETTING["head_lr_scale"],
                    help="PyTorch: the output layer's learning rate is this times --lr's (Adam's 1e-3)")
    ap.add_argument("--keras-adam", choices=("summed", "keras"), default=SETTING["keras_adam"],
                    help="TensorFlow backend: Adam with a row-sparse gradient's repeats summed first, or Keras's own")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.front == "keras" and args.head_lr_scale != 1.0:
        ap.error("--head-lr-scale: Keras's optimizers take one learning rate for every weight; "
                 f"use it with --front torch (got --front keras and {args.head_lr_scale})")
    setting = dict(SETTING, tokens=args.tokens, valid=args.valid, lr=args.lr, keras_adam=args.keras_adam,
                   head_lr_scale=args.head_lr_scale)
    res = run(f"{args.data}/{args.corpus}", front=args.front, orders=args.orders.split(","),
              samplers=args.samplers.split(","), num_sampled=[int(s) for s in args.num_sampled.split(",")],
              draws=args.draws.split(","), epochs=args.epochs, seconds=args.seconds, setting=setting,
              seed=args.seed, log=lambda line: print(line, file=sys.stderr, flush=True))
    res["corpus"] = args.corpus
    if args.json:
        dump(args.json, res)
    print(f"{args.corpus}: V={res['V']}, unigram perplexity {res['unigram_perplexity']:.0f}, front {args.front}")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
