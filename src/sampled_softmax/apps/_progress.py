"""Progress bars of the applications: ``tqdm`` (an optional dependency: the ``apps`` extra)."""

from __future__ import annotations

import sys


def progress_bar(total: int, label: str):
    """A ``tqdm`` bar on stderr; without tqdm installed, tqdm's interface doing nothing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar(total)
    return tqdm(total=total, desc=label, file=sys.stderr, leave=True, dynamic_ncols=True)


class _NoBar:
    """The part of tqdm's interface the applications use, silent (tqdm is not installed)."""

    def __init__(self, total: int):
        self.total, self.n = total, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None without matplotlib (an
    optional dependency: the ``apps`` extra); the applications then skip their figures."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
