"""Interaction files for sequential recommendation, read and checked before any training: the
leave-one-out split of Kang & McAuley (SASRec, 2018) and of Klenitskiy & Vasilev (RecSys '23).

Two formats, told apart by their lines:

* ``user item``: one interaction a line, each user's lines in time order (the BERT4Rec and SASRec
  authors' files; users' lines may interleave);
* ``user i1 i2 ...``: one user a line, the items in time order (S3-Rec's and RecBole's exports).

Item ids are the catalogue: the integers ``1..V``, each used (0-based files, ``0..V-1``, are
read as ``1..V``: 0 is the model's padding id). Users need
three interactions (the last one is the test target, the one before it the validation target,
the rest is the training sequence). A file that breaks a rule is an error naming its line;
``remap_ids=True`` numbers arbitrary integer item ids ``1..V`` in order of first appearance.
NumPy only: no framework is imported here.
"""

from __future__ import annotations

import array
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
        return np.bincount(np.concatenate([s[:-2] for s in self.sequences]), minlength=self.num_items + 1)


def _error(path: str, line: int, message: str) -> SampledSoftmaxError:
    return SampledSoftmaxError(f"--data {path}, line {line}: {message}")


def _parse_int(path: str, line: int, field: str) -> int:
    try:
        value = int(field)
    except ValueError:
        raise _error(path, line, f"{field!r} is not an integer id (expected `user item` or `user i1 i2 ...`, "
                                 "integers separated by spaces)") from None
    if not -2**63 <= value < 2**63:
        raise _error(path, line, f"id {field} does not fit in 64 bits; pass ids below 2**63")
    return value


def read_interactions(path: str, *, remap_ids: bool = False) -> Interactions:
    """Read and check ``path`` (see the module docstring). Raises :class:`SampledSoftmaxError`
    naming the line of the first problem. One pass over the lines into three integer arrays
    (user, item, line), then NumPy: a file of tens of millions of lines fits in memory."""
    users, items, lines = array.array("q"), array.array("q"), array.array("q")
    all_pairs = True
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 2:
                    raise _error(path, number, f"one field ({fields[0]!r}); expected `user item` or "
                                               "`user i1 i2 ...`")
                all_pairs &= len(fields) == 2
                user = _parse_int(path, number, fields[0])
                for field in fields[1:]:
                    users.append(user)
                    items.append(_parse_int(path, number, field))
                    lines.append(number)
    except OSError as e:
        raise SampledSoftmaxError(f"--data {path!r} cannot be read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SampledSoftmaxError(f"--data {path}: not a text file (expected `user item` lines)") from None
    if not users:
        raise SampledSoftmaxError(f"--data {path}: the file holds no interactions (expected `user item` lines, or "
                                  "`user i1 i2 ...` lines)")
    users, items, lines = (np.frombuffer(a, np.int64) for a in (users, items, lines))
    # Group by user, users in order of first appearance, each user's items in file order.
    ids, first, which = np.unique(users, return_index=True, return_inverse=True)
    rank = np.empty(len(ids), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(ids))
    order = np.argsort(rank[which], kind="stable")
    counts = np.bincount(rank[which], minlength=len(ids))
    bounds = np.cumsum(counts)[:-1]
    user_order = ids[np.argsort(rank)]
    line_groups = np.split(lines[order], bounds)
    if not all_pairs:
        _check_one_line_per_user(path, user_order, line_groups)
    short = np.flatnonzero(counts[np.argsort(rank)] < MIN_INTERACTIONS)
    if short.size:
        u = int(short[np.argmin([line_groups[k][-1] for k in short])])
        n = len(line_groups[u])
        raise _error(path, int(line_groups[u][-1]), f"user {int(user_order[u])} has {n} interaction{'s' * (n != 1)}; "
                                                    f"leave-one-out needs at least {MIN_INTERACTIONS} (a training "
                                                    "item, then the validation and the test targets)")
    if remap_ids:
        items, num_items = _renumber(items)
    else:
        if items.min() == 0:  # 0-based ids (0..V-1): the same catalogue, shifted past the padding id 0
            items = items + 1
        num_items = _check_catalogue(path, items, lines)
    item_groups = np.split(items[order], bounds)
    return Interactions(item_groups, user_order.tolist(), num_items, "user item" if all_pairs else "user i1 i2 ...",
                        path)


def _check_one_line_per_user(path, user_order, line_groups) -> None:
    """A ``user i1 i2 ...`` file has one line per user: the first user seen on a second line is an error."""
    worst = None
    for u, where in zip(user_order, line_groups):
        again = np.flatnonzero(where != where[0])
        if again.size and (worst is None or where[again[0]] < worst[1]):
            worst = (int(u), int(where[again[0]]), int(where[0]))
    if worst is not None:
        u, line, first = worst
        raise _error(path, line, f"user {u} again (first on line {first}): a `user i1 i2 ...` file has one line per "
                                 "user, and lines of other lengths than 2 are not `user item` pairs either (a "
                                 "`user item timestamp` file is neither: keep its first two columns, each user's "
                                 "lines in time order)")


def _check_catalogue(path, items, lines) -> int:
    """The items must be exactly ``1..V``: the catalogue is every id up to the largest."""
    low = int(items.argmin())
    if items[low] < 1:
        raise _error(path, int(lines[low]), f"item id {int(items[low])}: item ids are 1..V (or 0..V-1); pass "
                                            "--remap-ids to number the items 1..V in order of appearance")
    top = int(items.argmax())
    num_items = int(items[top])
    distinct = np.unique(items)  # no table as long as the largest id: ids may be anything
    if distinct.size != num_items:
        missing = num_items - distinct.size
        gap = int(np.flatnonzero(distinct != np.arange(1, distinct.size + 1))[0]) + 1
        raise _error(path, int(lines[top]), f"item id {num_items} but {missing} id{'s' * (missing > 1)} below it "
                                            f"never appear{'s' * (missing == 1)} (the first: {gap}): item ids must "
                                            "be contiguous, 1..V, as the catalogue is every id up to the largest; "
                                            "pass --remap-ids to number the items 1..V in order of appearance")
    return num_items


def _renumber(items):
    """Item ids ``1..V`` in order of first appearance in the file: ``(items, V)``."""
    ids, first, which = np.unique(items, return_index=True, return_inverse=True)
    new = np.empty(len(ids), np.int64)
    new[np.argsort(first, kind="stable")] = np.arange(1, len(ids) + 1)
    return new[which], len(ids)


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
