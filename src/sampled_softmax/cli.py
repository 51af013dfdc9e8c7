"""The ``sampled-softmax`` command (also ``python -m sampled_softmax``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys

from . import __version__

FRONT_ENDS = {"torch": "torch", "tensorflow": "tensorflow", "keras": "keras", "jax": "jax"}


def _info(_args) -> int:
    print(f"sampled-softmax {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    import numpy

    print(f"numpy {numpy.__version__}")
    for front_end, framework in FRONT_ENDS.items():
        try:
            mod = importlib.import_module(framework)
            version = getattr(mod, "__version__", "?")
        except ImportError as exc:
            installed = importlib.util.find_spec(framework) is not None
            print(f"{framework}: installed but not importable ({exc})" if installed else
                  f"{framework}: not installed (front end sampled_softmax.{front_end} unavailable)")
            continue
        try:
            importlib.import_module(f"sampled_softmax.{front_end}")
            status = "importable"
        except ImportError as exc:
            status = f"not importable ({exc})"
        print(f"{framework} {version}: sampled_softmax.{front_end} {status}")
        if front_end == "torch" and status == "importable":
            from sampled_softmax.torch import compiled_core_status

            print("  " + compiled_core_status())
    return 0


BENCH_HOWTO = (
    "sampled-softmax bench runs the benchmark suite of a source checkout (`benchmarks/` is not part of the "
    "installed package): from the root of a clone of the repository, run `sampled-softmax bench [options]` "
    "or `python -m benchmarks [options]`")


def _bench(args) -> int:
    """``python -m benchmarks`` in the current directory, when it is a checkout's root; else how to run it."""
    import subprocess

    here = os.getcwd()
    if not os.path.isfile(os.path.join(here, "benchmarks", "__main__.py")):
        print(BENCH_HOWTO, file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.rest], cwd=here)


def _torch_command(module: str):
    """A command implemented by ``sampled_softmax.<module>.main`` (which needs PyTorch)."""

    def run(args) -> int:
        try:
            command = importlib.import_module(f"sampled_softmax.apps.{module}").main
        except ImportError as exc:
            print(f"sampled-softmax {module} needs PyTorch (pip install 'sampled-softmax[torch]'): {exc}",
                  file=sys.stderr)
            return 2
        return command(args.rest)

    return run


_demo, _diagnose, _word2vec = _torch_command("demo"), _torch_command("diagnose"), _torch_command("word2vec")
_seqrec = _torch_command("seqrec")
PASS_THROUGH = {"bench": _bench, "demo": _demo, "diagnose": _diagnose, "word2vec": _word2vec, "seqrec": _seqrec}
PASS_THROUGH_HELP = {
    "bench": "the benchmark suite (options: python -m benchmarks --help)",
    "demo": "train a language model with full, sampled and adaptive softmax side by side "
            "(options: sampled-softmax demo --help)",
    "diagnose": "bias and variance of the sampled loss and its gradient against the full softmax "
                "(options: sampled-softmax diagnose --help)",
    "word2vec": "skip-gram word vectors with negative sampling, NCE or sampled softmax "
                "(options: sampled-softmax word2vec --help)",
    "seqrec": "sequential recommendation: SASRec trained with any of the library's losses "
              "(options: sampled-softmax seqrec --help)",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sampled-softmax", description="Sampled softmax for PyTorch, TensorFlow and Keras 3.")
    parser.add_argument("--version", action="version", version=f"sampled-softmax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and which front ends are importable").set_defaults(func=_info)
    # Commands whose options their own parser reads (everything after the command's name).
    for name, help_text in PASS_THROUGH_HELP.items():
        command = sub.add_parser(name, help=help_text)
        command.add_argument("rest", nargs=argparse.REMAINDER)
        command.set_defaults(func=PASS_THROUGH[name])
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in PASS_THROUGH:  # everything after the command belongs to its parser
        return PASS_THROUGH[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
