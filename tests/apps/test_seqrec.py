"""``sampled-softmax seqrec`` (issue 34): the interaction files it reads and refuses, the
leave-one-out split, the full-catalogue metrics (checked against a brute-force ranking written
here), and a smoke run of every loss on a tiny synthetic catalogue (the Beauty study is a
command: ``python -m benchmarks.seqrec_study``)."""

import json
import math

import numpy as np
import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.apps import seqrec
from sampled_softmax.apps.seqrec_data import leave_one_out, read_interactions


def _write(tmp_path, text, name="data.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _cycle_users(num_users=48, num_items=12, length=9, seed=0):
    """Each user walks the catalogue in steps of 1 from a random start: the next item is
    predictable from the last one."""
    rng = np.random.default_rng(seed)
    return [[(s + j) % num_items + 1 for j in range(length)] for s in rng.integers(0, num_items, num_users)]


def _pairs_text(users):
    return "".join(f"{u} {i}\n" for u, items in enumerate(users, 1) for i in items)


def test_both_formats_read_the_same_sequences(tmp_path):
    users = _cycle_users(5)
    a = read_interactions(_write(tmp_path, _pairs_text(users), "pairs.txt"))
    b = read_interactions(_write(tmp_path, "".join(f"{u} " + " ".join(map(str, s)) + "\n"
                                                   for u, s in enumerate(users, 1)), "lists.txt"))
    assert (a.format, b.format) == ("user item", "user i1 i2 ...")
    assert a.num_items == b.num_items == 12
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert [list(s) for s in a.sequences] == users


def test_interleaved_users_keep_each_users_time_order(tmp_path):
    data = read_interactions(_write(tmp_path, "7 1\n9 3\n7 2\n9 2\n7 3\n9 1\n"))
    assert data.user_ids == [7, 9]
    assert [list(s) for s in data.sequences] == [[1, 2, 3], [3, 2, 1]]


def test_leave_one_out_split():
    class D:
        sequences = [np.array([4, 5, 6, 7, 8])]

    split = leave_one_out(D)
    assert list(split.train[0]) == [4, 5, 6]
    assert list(split.valid_history[0]) == [4, 5, 6] and split.valid_target[0] == 7
    assert list(split.test_history[0]) == [4, 5, 6, 7] and split.test_target[0] == 8


@pytest.mark.parametrize("text,match", [
    ("", "holds no interactions"),
    ("\n  \n", "holds no interactions"),
    ("1 1\n1 2\n1 3\n2 1\n", "line 4: user 2 has 1 interaction;"),
    ("1 1\n1 2\n1 3\n2 x\n", r"line 4: 'x' is not an integer id"),
    ("1 1\n1 2\n1 3\n2 1.5\n", r"line 4: '1.5' is not an integer id"),
    ("1 1\n1 2\n1 5\n", r"line 3: item id 5 but 2 ids below it never appear \(the first: 3\).*--remap-ids"),
    ("1 1\n1 2\n1 3\n2 1\n2 99999999999999\n2 2\n", r"line 5: item id 99999999999999 but 99999999999995 ids below it never appear \(the first: 4\)"),
    ("1 1\n1 2\n1 99999999999999999999\n", "line 3: id 99999999999999999999 does not fit in 64 bits"),
    ("1 -1\n1 2\n1 1\n", r"line 1: item id -1: item ids are 1..V \(or 0..V-1\)"),
    ("1 0\n1 2\n1 3\n", r"line 3: item id 4 but 1 id below it never appears \(the first: 2\)"),
    ("1 5 7 2\n1 5 7 3\n", r"line 2: user 1 again .*`user item timestamp`"),
    ("1 1 2 3\n2\n", "line 2: one field"),
    ("1 1 2 3\n2 2 3 1\n1 3 2 1\n", "line 3: user 1 again \\(first on line 1\\)"),
    ("1 1 2 3\n2 1\n", "line 2: user 2 has 1 interaction"),
])
def test_bad_files_are_errors_naming_the_line(tmp_path, text, match):
    with pytest.raises(SampledSoftmaxError, match=match):
        read_interactions(_write(tmp_path, text))


def test_a_bad_file_is_a_command_line_error_before_training(tmp_path, capsys):
    path = _write(tmp_path, "1 1\n1 2\n1 3\n2 b\n")
    with pytest.raises(SystemExit) as e:
        seqrec.main(["--data", path, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert "line 4: 'b' is not an integer id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        seqrec.main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out")])
    assert "cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["--loss", "full", "--num-sampled", "5"], "--num-sampled does not apply to --loss full"),
    (["--loss", "gbce", "--gbce-t", "2"], "--gbce-t must be in"),
    (["--num-sampled", "0"], "--num-sampled must be an integer >= 1"),
    (["--data-of-threes"], "no user has more than 3 interactions"),
    (["--num-sampled", "12"], "--num-sampled must be smaller than the catalogue \\(12 items\\)"),
    (["--popularity-power", "0"], "--popularity-power must be in \\(0, 4\\]; received 0.0"),
    (["--popularity-power", "4.5"], "--popularity-power must be in \\(0, 4\\]; received 4.5"),
    (["--sampler", "uniform", "--popularity-power", "0.5"], "--popularity-power applies to --sampler popularity"),
    (["--loss", "nce", "--exclude-true"], "--exclude-true applies to --loss sampled_softmax only; received --loss nce"),
    (["--exclude-true", "--exclude-history"], "--exclude-true takes neither --exclude-history nor --no-log-q"),
    (["--exclude-true", "--no-log-q"], "--exclude-true takes neither --exclude-history nor --no-log-q"),
])
def test_bad_options_are_errors_naming_them(tmp_path, capsys, argv, match):
    path = _write(tmp_path, _pairs_text(_cycle_users(4)))
    if argv == ["--data-of-threes"]:
        path, argv = _write(tmp_path, _pairs_text(_cycle_users(4, num_items=3, length=3)), "threes.txt"), []
    with pytest.raises(SystemExit):
        seqrec.main(["--data", path, "--out", str(tmp_path / "out"), *argv])
    assert __import__("re").search(match, capsys.readouterr().err)


def test_popularity_power_draws_in_proportion_to_the_counts_raised_to_it(tmp_path):
    """``--popularity-power a``: item ``i`` drawn with probability ``(count_i + 1) ** a / sum``,
    written here from the training split's counts, not from the sampler's own table."""
    path = _write(tmp_path, _pairs_text(_cycle_users(6)))
    data = read_interactions(path)
    counts = np.bincount(np.concatenate([s[:-2] for s in data.sequences]), minlength=data.num_items + 1)[1:]
    for power in (1.0, 0.5, 1.5):
        want = (counts + 1.0) ** power
        assert power == 1.0 or np.ptp(want) > 0  # counts that differ, so the power matters
        sampler = seqrec.make_sampler("popularity", data, "with_replacement", power)
        cand, _, expected = sampler(torch.zeros(1, 1, dtype=torch.long), 10, generator=torch.Generator().manual_seed(0))
        np.testing.assert_allclose(expected.numpy(), 10 * want[cand.numpy()] / want.sum(), rtol=1e-6)


def test_zero_based_item_ids_are_the_same_catalogue(tmp_path):
    data = read_interactions(_write(tmp_path, "1 0\n1 2\n1 1\n2 1\n2 0\n2 2\n"))
    assert data.num_items == 3
    assert [list(s) for s in data.sequences] == [[1, 3, 2], [2, 1, 3]]


def test_remap_ids_numbers_items_in_order_of_appearance(tmp_path):
    data = read_interactions(_write(tmp_path, "1 100\n1 7\n1 100\n2 7\n2 55\n2 100\n"), remap_ids=True)
    assert data.num_items == 3
    assert [list(s) for s in data.sequences] == [[1, 2, 1], [2, 3, 1]]


def test_metrics_match_a_brute_force_ranking():
    torch.manual_seed(0)
    model = seqrec.SASRec(30, max_length=6, hidden=8, blocks=1, dropout=0.0)
    rng = np.random.default_rng(1)
    histories = [rng.choice(np.arange(1, 31), size=rng.integers(1, 9), replace=False) for _ in range(40)]
    targets = rng.integers(1, 31, 40)
    got = seqrec.evaluate(model, histories, targets, max_length=6, ks=(5, 10), batch_size=7)
    hits, ndcg = {5: 0, 10: 0}, {5: 0.0, 10: 0.0}
    with torch.no_grad():
        model.eval()
        for hist, target in zip(histories, targets):
            inputs = torch.tensor(hist[-6:])[None]
            scores = (model(inputs)[0, -1] @ model.item_emb.weight[1:].T).numpy()
            unseen = [i for i in range(1, 31) if i not in set(hist)]
            ranking = sorted(unseen, key=lambda i: -scores[i - 1])
            if target in ranking:
                rank = ranking.index(target) + 1
                for k in hits:
                    if rank <= k:
                        hits[k] += 1
                        ndcg[k] += 1 / math.log2(rank + 1)
    for k in (5, 10):
        assert got[f"hr@{k}"] == pytest.approx(hits[k] / 40)
        assert got[f"ndcg@{k}"] == pytest.approx(ndcg[k] / 40)


def test_padding_positions_do_not_change_the_outputs_of_real_ones():
    torch.manual_seed(0)
    model = seqrec.SASRec(20, max_length=8, hidden=8, blocks=2, dropout=0.0).eval()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model(short)[0], model(padded)[0, :3])


SMALL = ["--hidden", "16", "--blocks", "1", "--batch-size", "16", "--valid-users", "0", "--threads", "1"]


@pytest.mark.parametrize("loss_args", [
    ["--loss", "full"],
    ["--loss", "sampled_softmax", "--num-sampled", "5", "--sampler", "popularity"],
    ["--loss", "sampled_softmax", "--num-sampled", "5", "--negatives", "sequence", "--exclude-history",
     "--no-log-q"],
    ["--loss", "sampled_softmax", "--num-sampled", "4", "--negatives", "position", "--sampler", "learned"],
    ["--loss", "sampled_softmax", "--num-sampled", "5", "--exclude-true"],
    ["--loss", "nce", "--num-sampled", "5"],
    ["--loss", "negative_sampling", "--exclude-history"],
    ["--loss", "gbce", "--num-sampled", "3"],
    ["--loss", "in_batch", "--exclude-history"],
    ["--loss", "mixed", "--num-sampled", "4", "--sampler", "popularity"],
])
def test_every_loss_trains_and_writes_its_results(tmp_path, loss_args):
    path = _write(tmp_path, _pairs_text(_cycle_users()))
    out = tmp_path / "out"
    assert seqrec.main(["--data", path, "--out", str(out), "--epochs", "2", *SMALL, *loss_args]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("test_hr@10", "test_ndcg@10", "test_hr@100", "test_ndcg@100", "valid_ndcg@10", "epochs",
                "train_seconds", "best_epoch", "seconds_per_epoch", "peak_memory_mb", "history"):
        assert key in results, key
    assert results["epochs"] == 2 and len(results["history"]) == 2
    assert 0.0 <= results["test_ndcg@10"] <= results["test_hr@10"] <= 1.0
    assert results["data"] == results["data"] | {"users": 48, "items": 12, "format": "user item"}


def test_full_cross_entropy_learns_a_predictable_sequence(tmp_path):
    path = _write(tmp_path, _pairs_text(_cycle_users(num_users=96, num_items=40, length=10)))
    out = tmp_path / "out"
    seqrec.main(["--data", path, "--out", str(out), "--epochs", "30", "--loss", "full", "--lr", "5e-3",
                 "--dropout", "0", *SMALL])
    results = json.loads((out / "results.json").read_text())
    # The next item is the last one plus 1 (never seen by the user): a model that learned it
    # ranks it first; chance is 10 of the ~31 unseen items.
    assert results["test_hr@10"] > 0.9, results["test_hr@10"]


def test_per_sequence_negatives_give_the_gradient_of_one_call_per_user(tmp_path):
    """``--negatives sequence``: each user's own draw, its rows' sparse gradients added into the
    table's once; the same loss and gradients as one plain (dense) library call per user."""
    from sampled_softmax.torch import sampled_softmax_loss

    path = _write(tmp_path, _pairs_text(_cycle_users(num_users=6, num_items=30)))
    data = read_interactions(path)
    ap = __import__("argparse").ArgumentParser()
    seqrec.add_arguments(ap)
    args = ap.parse_args(["--data", path, "--out", str(tmp_path), "--num-sampled", "7", "--negatives", "sequence", "--sampler", "uniform",
                          "--exclude-history", "--dropout", "0"])
    seqrec.check_arguments(ap, args)
    torch.manual_seed(0)
    model = seqrec.SASRec(data.num_items, hidden=8, blocks=1, dropout=0.0)
    inputs, labels = next(seqrec.training_batches(leave_one_out(data).train, 50, 6, np.random.default_rng(0)))
    loss = seqrec.LossFunction(args, data, torch.Generator().manual_seed(5))(model, inputs, labels)
    loss.backward()
    ours = model.item_emb.weight.grad.clone()
    model.zero_grad()
    sampler, g = seqrec.make_sampler("uniform", data, "unique"), torch.Generator().manual_seed(5)
    assert type(sampler).__name__ == "UniformSampler"
    states, real = model(inputs), inputs != 0
    total = 0
    for b in range(inputs.shape[0]):
        mask = real[b]
        history = torch.cat([inputs[b, :1], labels[b]]) - 1
        rows, y = states[b][mask], labels[b][mask] - 1
        total = total + sampled_softmax_loss(model.output_table, None, y, rows, 7, data.num_items, sampler=sampler,
                                             generator=g, excluded_ids=history.expand(len(y), -1), reduction="sum")
    expected = total / real.sum()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours, model.item_emb.weight.grad)


def test_exclude_true_is_the_librarys_rejection_estimator_over_draws_with_replacement(tmp_path):
    """``--exclude-true``: the batch's shared negatives drawn with replacement from the
    popularity sampler, and the loss of one library call with ``exclude_true=True``."""
    from sampled_softmax.torch import sampled_softmax_loss

    path = _write(tmp_path, _pairs_text(_cycle_users(num_users=6, num_items=30)))
    data = read_interactions(path)
    ap = __import__("argparse").ArgumentParser()
    seqrec.add_arguments(ap)
    args = ap.parse_args(["--data", path, "--out", str(tmp_path), "--num-sampled", "7", "--exclude-true",
                          "--dropout", "0"])
    seqrec.check_arguments(ap, args)
    torch.manual_seed(0)
    model = seqrec.SASRec(data.num_items, hidden=8, blocks=1, dropout=0.0)
    inputs, labels = next(seqrec.training_batches(leave_one_out(data).train, 50, 6, np.random.default_rng(0)))
    function = seqrec.LossFunction(args, data, torch.Generator().manual_seed(5))
    assert function.sampler.draw == "with_replacement"
    loss = function(model, inputs, labels)
    real = inputs != 0
    sampler = seqrec.make_sampler("popularity", data, "with_replacement")
    expected = sampled_softmax_loss(model.output_table, None, labels[real] - 1, model(inputs)[real], 7, data.num_items,
                                    sampler=sampler, generator=torch.Generator().manual_seed(5), exclude_true=True,
                                    reduction="mean")
    torch.testing.assert_close(loss, expected)
    tf_estimator = sampled_softmax_loss(model.output_table, None, labels[real] - 1, model(inputs)[real], 7,
                                        data.num_items, sampler=sampler, generator=torch.Generator().manual_seed(5),
                                        reduction="mean")
    assert not torch.allclose(loss, tf_estimator)  # the option changes the estimator


def test_ctrl_c_tests_the_best_epoch_so_far_and_progress_is_written_each_epoch(tmp_path, monkeypatch):
    path = _write(tmp_path, _pairs_text(_cycle_users()))
    out = tmp_path / "out"
    real_evaluate, calls = seqrec.evaluate, []

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # the third epoch's validation: the user presses Ctrl-C
            assert json.loads((out / "progress.json").read_text())["history"][-1]["epoch"] == 2
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(seqrec, "evaluate", evaluate)
    assert seqrec.main(["--data", path, "--out", str(out), "--epochs", "5", *SMALL, "--loss", "full"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] is True and results["epochs"] == 2 and len(calls) == 4


def test_every_study_configuration_is_a_command_line_seqrec_accepts():
    """Each configuration of ``benchmarks.seqrec_study`` parses and passes seqrec's checks, so
    that a misspelt option fails here and not an hour into a study."""
    import argparse

    from benchmarks.seqrec_study import CONFIGS

    for name, options in CONFIGS.items():
        ap = argparse.ArgumentParser(prog=name, exit_on_error=False)
        seqrec.add_arguments(ap)
        args = ap.parse_args(["--data", "d.txt", "--out", "o", *options])
        seqrec.check_arguments(ap, args)  # ap.error raises SystemExit: the test fails naming the configuration
        assert args.loss in seqrec.LOSSES and (args.num_sampled or args.loss in ("full", "in_batch")), name
