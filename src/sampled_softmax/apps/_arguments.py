"""Command-line arguments checked before any work starts: an error names the option, what it
must be and what it received (``argparse``'s own error: usage, message, exit status 2)."""

from __future__ import annotations

import argparse
import math


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_at_least(ap: argparse.ArgumentParser, args, minimum: int, *names: str) -> None:
    """Integer options that must be ``>= minimum`` (None: not given, allowed)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            ap.error(f"{_option(name)} must be an integer >= {minimum}; received {value}")


def check_positive_float(ap: argparse.ArgumentParser, args, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            ap.error(f"{_option(name)} must be a finite number > 0; received {value}")


def comma_list(ap: argparse.ArgumentParser, name: str, text: str, choices=None, kind=str) -> list:
    """The non-empty comma-separated values of an option, each one of ``choices`` if given."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        ap.error(f"{_option(name)} must name at least one value; received {text!r}")
    out = []
    for v in values:
        if choices is not None and v not in choices:
            ap.error(f"{_option(name)}: {v!r} is not one of {', '.join(choices)}")
        try:
            out.append(kind(v))
        except ValueError:
            ap.error(f"{_option(name)} must be comma-separated {kind.__name__}s; received {v!r}")
    return out
