"""Word2vec on WikiText-2 against gensim: the same skip-gram settings, side by side on this machine.

gensim's ``Word2Vec(sg=1)`` and ``sampled_softmax.apps.word2vec`` (negative sampling, and the
sampled softmax and NCE objectives) train on WikiText-2's training text (read by path, never
copied) with the same dimension, window, negatives, min count, subsampling and epochs, on the
same cores. Reported for each: wall-clock, words/s, analogy accuracy (``questions-words.txt``,
3CosAdd over the 30k most frequent words), Spearman on WordSim353 and SimLex-999. Every model is
scored by gensim's own ``evaluate_word_analogies`` / ``evaluate_word_pairs`` (ours loaded as
``KeyedVectors``) and by ours; the two must agree.

    python -m benchmarks.word2vec_study [--data ../shared/data] [--epochs 5] [--losses negative_sampling,...]
        [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scores(vectors, eval_dir: str) -> dict:
    """Ours and gensim's evaluation of one set of vectors (a ``WordVectors``)."""
    from gensim.models import KeyedVectors

    from sampled_softmax.apps.word2vec import evaluate

    ours = evaluate(vectors, eval_dir)
    with tempfile.TemporaryDirectory() as tmp:
        kv = KeyedVectors.load_word2vec_format(vectors.save_word2vec_format(os.path.join(tmp, "v.txt")))
    analogy = kv.evaluate_word_analogies(os.path.join(eval_dir, "questions-words.txt"))[0]
    pairs = {name: kv.evaluate_word_pairs(os.path.join(eval_dir, f"{name}{ext}"))[1].statistic
             for name, ext in (("wordsim353", ".tsv"), ("simlex999", ".txt"))}
    return {"analogy": ours["analogy"]["accuracy"], "wordsim353": ours["wordsim353"]["spearman"],
            "simlex999": ours["simlex999"]["spearman"],
            "gensim_eval": {"analogy": float(analogy), **{k: float(v) for k, v in pairs.items()}}}


def run(data: str, epochs: int, losses, threads: int, seed: int = 1, rounds: int = 1) -> dict:
    """``rounds`` rounds, each training gensim then each of ``losses`` (seed ``seed + round``),
    so that every method sees the machine as the others did. Wall-clock is the whole call for
    both (vocabulary, encoding and training), the compiled core built before any clock starts."""
    import gensim
    import torch

    from sampled_softmax.apps.word2vec import Word2VecConfig, WordVectors, read_sentences, train
    from sampled_softmax.torch import _compiled

    torch.set_num_threads(threads)
    _compiled.extension()
    sentences = read_sentences(os.path.join(data, "wikitext-2"))
    eval_dir = os.path.join(data, "word-eval")
    settings = dict(dim=100, window=5, min_count=5, sample=1e-3, negative=5, epochs=epochs, alpha=0.025,
                    min_alpha=0.0001)
    corpus_words = sum(len(s) for s in sentences)
    runs: dict = {}
    for k in range(rounds):
        start = time.perf_counter()
        g = gensim.models.Word2Vec(sentences, vector_size=settings["dim"], window=settings["window"],
                                   min_count=settings["min_count"], sample=settings["sample"],
                                   negative=settings["negative"], epochs=epochs, alpha=settings["alpha"],
                                   min_alpha=settings["min_alpha"], sg=1, workers=threads, seed=seed + k)
        wall = time.perf_counter() - start
        kv = g.wv
        gensim_vectors = WordVectors(list(kv.index_to_key), kv.vectors, kv.get_vecattr_array("count")
                                     if hasattr(kv, "get_vecattr_array") else None)
        runs.setdefault(f"gensim {gensim.__version__} (negative sampling)", []).append(
            {"wall_s": wall, **scores(gensim_vectors, eval_dir)})
        for loss in losses:
            config = Word2VecConfig(**settings, loss=loss, seed=seed + k, threads=threads)
            start = time.perf_counter()
            model = train(sentences, config, progress=False)
            wall = time.perf_counter() - start
            name = f"ours ({loss}, {model.stats['implementation']})"
            runs.setdefault(name, []).append({"wall_s": wall, "train_s": model.stats["wall_s"],
                                              **scores(model, eval_dir)})
    rows = [summarize(name, r, corpus_words * epochs) for name, r in runs.items()]
    return {"command": "python -m benchmarks.word2vec_study " + " ".join(sys.argv[1:]), "settings": settings,
            "threads": threads, "rounds": rounds, "corpus_words": corpus_words, "rows": rows, "runs": runs}


def summarize(method: str, runs: list, words: int) -> dict:
    """One method's rounds: the median wall-clock, the mean scores and their range."""
    import numpy as np

    row = {"method": method, "wall_s": float(np.median([r["wall_s"] for r in runs])), "rounds": len(runs)}
    row["words_per_s"] = words / row["wall_s"]
    for key in ("analogy", "wordsim353", "simlex999"):
        values = [r[key] for r in runs]
        row[key], row[key + "_range"] = float(np.mean(values)), [float(min(values)), float(max(values))]
    return row


def format_rows(result: dict) -> list[str]:
    lines = [f"{'method':<42} {'wall s':>7} {'words/s':>9} {'analogy':>8} {'WS353':>7} {'SimLex':>7}"]
    for r in result["rows"]:
        lines.append(f"{r['method']:<42} {r['wall_s']:>7.1f} {r['words_per_s']:>9,.0f} {r['analogy']:>8.4f} "
                     f"{r['wordsim353']:>7.4f} {r['simlex999']:>7.4f}")
        if r.get("rounds", 1) > 1:
            lines.append("    range over rounds: " + ", ".join(
                f"{key} {r[key + '_range'][0]:.4f}..{r[key + '_range'][1]:.4f}"
                for key in ("analogy", "wordsim353", "simlex999")))
    base = result["rows"][0]
    for r in result["rows"][1:]:
        lines.append(f"  {r['method']} / gensim: wall {r['wall_s'] / base['wall_s']:.2f}x (medians), analogy "
                     f"{100 * (r['analogy'] - base['analogy']):+.2f} points, WS353 "
                     f"{r['wordsim353'] - base['wordsim353']:+.3f}, SimLex {r['simlex999'] - base['simlex999']:+.3f}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--losses", default="negative_sampling,sampled_softmax,nce")
    ap.add_argument("--rounds", type=int, default=1, help="alternate gensim and ours this many times (seeds 1, 2, ...)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "study_results", "word2vec"))
    args = ap.parse_args(argv)
    losses = [x for x in args.losses.split(",") if x]
    result = run(args.data, args.epochs, losses, args.threads, rounds=args.rounds)
    os.makedirs(args.out, exist_ok=True)
    name = f"wikitext-2-epochs{args.epochs}" + ("" if args.rounds == 1 else f"-rounds{args.rounds}")
    if losses != ["negative_sampling", "sampled_softmax", "nce"]:
        name += "-" + "-".join(losses)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(format_rows(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
