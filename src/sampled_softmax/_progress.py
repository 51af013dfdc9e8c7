"""A dependency-free one-line progress bar (stderr), for the demo and the benchmarks."""

from __future__ import annotations

import sys


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = max(total, 1), 0, label
        self.tty = sys.stderr.isatty()

    def step(self, note: str = "") -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        line = f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {note}"
        if self.tty:
            sys.stderr.write(line[:120].ljust(120))
            if self.done == self.total:
                sys.stderr.write("\n")
        elif self.done == self.total or self.done % max(1, self.total // 4) == 0:
            sys.stderr.write(line.strip() + "\n")
        sys.stderr.flush()
