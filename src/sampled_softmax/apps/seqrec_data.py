"""Interaction files for sequential recommendation, read and checked before any training: the
leave-one-out split of Kang & McAuley (SASRec, 2018) and of Klenitskiy & Vasilev (RecSys '23).

Two formats, told apart by their lines:

* ``user item``: one interaction a line, each user's lines in time order (the BERT4Rec and SASRec
  authors' files; users' lines may interleave);
* ``user i1 i2 ...``: one user a line, the items in time order (S3-Rec's and RecBole's exports).

Item ids are the catalogue: the integers ``1..V``, each used (0 is the padding id). Users need
three interactions (the last one is the test target, the one before it the validation target,
the rest is the training sequence). A file that breaks a rule is an error naming its line;
``remap_ids=True`` numbers arbitrary integer item ids ``1..V`` in order of first appearance.
NumPy only: no framework is imported here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import SampledSoftmaxError

MIN_INTERACTIONS = 3  # a training item, a validation target, a test target


@dataclasses.dataclass
class Interactions:
    """Each user's items in time order (``sequences[u]``, int64 ids ``1..num_items``)."""

    sequences: list
    user_ids: list
    num_items: int
    format: str  # "user item" or "user i1 i2 ..."
    path: str

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_counts(self) -> np.ndarray:
        """``[num_items + 1]`` training-split counts of each item (index 0, padding, is 0)."""
        counts = np.zeros(self.num_items + 1, np.int64)
        for s in self.sequences:
            np.add.at(counts, s[:-2], 1)
        return counts


def _error(path: str, line: int, message: str) -> SampledSoftmaxError:
    return SampledSoftmaxError(f"--data {path}, line {line}: {message}")


def _parse_int(path: str, line: int, field: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise _error(path, line, f"{field!r} is not an integer id (expected `user item` or `user i1 i2 ...`, "
                                 "integers separated by spaces)") from None


def read_interactions(path: str, *, remap_ids: bool = False) -> Interactions:
    """Read and check ``path`` (see the module docstring). Raises :class:`SampledSoftmaxError`
    naming the line of the first problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SampledSoftmaxError(f"--data {path!r} cannot be read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SampledSoftmaxError(f"--data {path}: not a text file (expected `user item` lines)") from None
    rows = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise SampledSoftmaxError(f"--data {path}: the file holds no interactions (expected `user item` lines, or "
                                  "`user i1 i2 ...` lines)")
    for number, fields in rows:
        if len(fields) < 2:
            raise _error(path, number, f"one field ({fields[0]!r}); expected `user item` or `user i1 i2 ...`")
    pairs = all(len(fields) == 2 for _, fields in rows)
    if pairs:
        users, order, lines = _read_pairs(path, rows)
        fmt = "user item"
    else:
        users, order, lines = _read_lists(path, rows)
        fmt = "user i1 i2 ..."
    sequences = [np.asarray(users[u], np.int64) for u in order]
    item_lines = [np.asarray(lines[u], np.int64) for u in order]
    for u, seq, where in zip(order, sequences, item_lines):
        if len(seq) < MIN_INTERACTIONS:
            raise _error(path, int(where[-1]), f"user {u} has {len(seq)} interaction{'s' * (len(seq) != 1)}; "
                                               f"leave-one-out needs at least {MIN_INTERACTIONS} (a training item, "
                                               "then the validation and the test targets)")
    if remap_ids:
        sequences, num_items = _remap(sequences)
    else:
        num_items = _check_catalogue(path, sequences, item_lines)
    return Interactions(sequences, order, num_items, fmt, path)


def _read_pairs(path, rows):
    users, lines, order = {}, {}, []
    for number, (u, i) in rows:
        u, i = _parse_int(path, number, u), _parse_int(path, number, i)
        if u not in users:
            users[u], lines[u] = [], []
            order.append(u)
        users[u].append(i)
        lines[u].append(number)
    return users, order, lines


def _read_lists(path, rows):
    users, lines, order, first = {}, {}, [], {}
    for number, fields in rows:
        u = _parse_int(path, number, fields[0])
        if u in users:
            raise _error(path, number, f"user {u} again (first on line {first[u]}): a `user i1 i2 ...` file has one "
                                       "line per user; lines of different lengths are not `user item` pairs either")
        first[u] = number
        users[u] = [_parse_int(path, number, x) for x in fields[1:]]
        lines[u] = [number] * (len(fields) - 1)
        order.append(u)
    return users, order, lines


def _check_catalogue(path, sequences, item_lines) -> int:
    """The items must be exactly ``1..V``: the catalogue is every id up to the largest."""
    items = np.concatenate(sequences)
    where = np.concatenate(item_lines)
    low = int(items.argmin())
    if items[low] < 1:
        raise _error(path, int(where[low]), f"item id {int(items[low])}: item ids start at 1 (0 is the padding "
                                            "id); pass --remap-ids to number the items 1..V in order of appearance")
    top = int(items.argmax())
    num_items = int(items[top])
    present = np.zeros(num_items + 1, bool)
    present[items] = True
    missing = np.flatnonzero(~present[1:]) + 1
    if missing.size:
        raise _error(path, int(where[top]), f"item id {num_items} but {missing.size} id{'s' * (missing.size > 1)} "
                                            f"below it never appear{'s' * (missing.size == 1)} (the first: "
                                            f"{int(missing[0])}): item ids must be contiguous, 1..V, as the "
                                            "catalogue is every id up to the largest; pass --remap-ids to number "
                                            "the items 1..V in order of appearance")
    return num_items


def _remap(sequences):
    items = np.concatenate(sequences)
    _, first = np.unique(items, return_index=True)
    in_order = items[np.sort(first)]
    new_id = {int(old): new for new, old in enumerate(in_order, 1)}
    return [np.array([new_id[int(i)] for i in s], np.int64) for s in sequences], len(in_order)


@dataclasses.dataclass
class Split:
    """The leave-one-out split: the training sequences (all but the last two items), and for
    validation and test each user's history (``inputs``: every item before the target) and target."""

    train: list
    valid_history: list
    valid_target: np.ndarray
    test_history: list
    test_target: np.ndarray


def leave_one_out(data: Interactions) -> Split:
    seqs = data.sequences
    return Split(train=[s[:-2] for s in seqs], valid_history=[s[:-2] for s in seqs],
                 valid_target=np.array([s[-2] for s in seqs], np.int64),
                 test_history=[s[:-1] for s in seqs], test_target=np.array([s[-1] for s in seqs], np.int64))
