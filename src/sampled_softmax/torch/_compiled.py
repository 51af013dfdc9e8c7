"""The compiled core (``csrc/sampled_softmax_core.cpp``), built on first use.

``torch.utils.cpp_extension`` compiles it once per machine and PyTorch version (about 45 s;
needs a C++ compiler and ``ninja``) into its cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``); later processes load the cached build. If it cannot be built,
:func:`core` returns None and says why in :func:`unavailable_reason`: the Python path, which
computes the same thing, is used instead.
"""

from __future__ import annotations

import logging
import os
import threading

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "sampled_softmax_core.cpp")
_lock = threading.Lock()
_state: dict = {}
log = logging.getLogger("sampled_softmax")


def _module_name() -> str:
    # The source's content in the name: an edited source never loads a stale build.
    import hashlib

    with open(_SOURCE, "rb") as f:
        return "sampled_softmax_core_" + hashlib.sha1(f.read()).hexdigest()[:12]


def core():
    """The compiled ``sampled_softmax_core`` function, or None when it cannot be built."""
    if "fn" in _state:
        return _state["fn"]
    with _lock:
        if "fn" not in _state:
            _state["fn"] = _build()
    return _state["fn"]


def unavailable_reason() -> str | None:
    core()
    return _state.get("why")


def _build():
    if os.environ.get("SAMPLED_SOFTMAX_NO_COMPILE"):
        _state["why"] = "SAMPLED_SOFTMAX_NO_COMPILE is set"
        return None
    try:
        from torch.utils.cpp_extension import load

        log.info("sampled_softmax: building the compiled core (once per machine, about a minute)")
        ext = load(name=_module_name(), sources=[_SOURCE], extra_cflags=["-O3"], verbose=False)
        return ext.sampled_softmax_core
    except Exception as e:  # no compiler, no ninja, a failed build: the Python path remains
        _state["why"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        log.warning("sampled_softmax: compiled core unavailable (%s); using the Python path", _state["why"])
        return None
