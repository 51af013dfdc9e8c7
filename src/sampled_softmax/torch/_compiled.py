"""The compiled core (``csrc/sampled_softmax_core.cpp``), built on first use.

``torch.utils.cpp_extension`` compiles it once per machine and PyTorch version (about 45 s;
needs a C++ compiler and ``ninja``) into its cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``); later processes load the cached build. If it cannot be built,
:func:`extension` returns None and says why in :func:`unavailable_reason`: the Python path,
which computes the same thing, is used instead.

The extension has three functions: ``sampled_softmax_core`` (the loss from given columns),
``sampled_softmax_sampled`` (the uniform or log-uniform draw on the CPU, then the loss) and
``sparse_row_adam_`` (``SparseRowAdam``'s sparse step). :func:`choose` is how each caller
honours its ``implementation`` argument.
"""

from __future__ import annotations

import logging
import os
import threading

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "sampled_softmax_core.cpp")
# -fno-math-errno: sqrt in a loop vectorises only when it need not set errno. -march=native:
# the build is this machine's own (its name carries the CPU's features, so a cache shared with
# another kind of CPU never loads it there); where the compiler refuses it, the portable flags.
_PORTABLE_CFLAGS = ["-O3", "-fno-math-errno"]
_NATIVE_CFLAGS = _PORTABLE_CFLAGS + ["-march=native"]
IMPLEMENTATIONS = ("auto", "compiled", "python")
_lock = threading.Lock()
_state: dict = {}
log = logging.getLogger("sampled_softmax")


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), else what the platform module says of the processor."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _module_name(cflags) -> str:
    # Source, flags and CPU in the name: an edited source never loads a stale build, nor a
    # native build another CPU.
    import hashlib

    with open(_SOURCE, "rb") as f:
        digest = hashlib.sha1(f.read() + " ".join(cflags).encode() + _cpu_features().encode())
    return "sampled_softmax_core_" + digest.hexdigest()[:12]


def extension():
    """The compiled extension module, or None when it cannot be built."""
    if "ext" in _state:
        return _state["ext"]
    with _lock:
        if "ext" not in _state:
            _state["ext"] = _build()
    return _state["ext"]


def is_built() -> bool:
    """Whether this process has the extension already (loading a cached build is quick)."""
    return _state.get("ext") is not None


def unavailable_reason() -> str | None:
    extension()
    return _state.get("why")


def choose(implementation: str, why: str | None):
    """The extension for a caller's ``implementation`` (one of :data:`IMPLEMENTATIONS`), or None
    for its Python path. ``why`` says what keeps the compiled code from this call (None: nothing);
    with ``"compiled"`` that, or a failed build, is an error naming it."""
    if implementation == "python":
        return None
    ext = None if why else extension()
    if ext is None and why is None:
        why = f"it could not be built ({unavailable_reason()})"
    if why and implementation == "compiled":
        from .. import SampledSoftmaxError

        raise SampledSoftmaxError(f"`implementation='compiled'` cannot be used: {why}")
    return ext


def _build():
    if os.environ.get("SAMPLED_SOFTMAX_NO_COMPILE"):
        _state["why"] = "SAMPLED_SOFTMAX_NO_COMPILE is set"
        return None
    try:
        from torch.utils.cpp_extension import load
    except Exception as e:
        _state["why"] = f"{type(e).__name__}: {e}"
        return None
    log.info("sampled_softmax: building the compiled core (once per machine, about a minute)")
    for cflags in (_NATIVE_CFLAGS, _PORTABLE_CFLAGS):
        try:
            return load(name=_module_name(cflags), sources=[_SOURCE], extra_cflags=cflags, verbose=False)
        except Exception as e:  # no compiler, no ninja, a failed build: the Python path remains
            _state["why"] = f"{type(e).__name__}: {_first_error_line(str(e))}"
    log.warning("sampled_softmax: compiled core unavailable (%s); using the Python path", _state["why"])
    return None


def _first_error_line(message: str) -> str:
    """The compiler's first ``error:`` line if there is one (ninja's own last line says only
    that the build stopped), else the message's last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or [""])[0 if errors else -1]
