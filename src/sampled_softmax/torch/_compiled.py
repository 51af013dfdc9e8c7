"""The compiled core (``csrc/``: ``loss.cpp``, ``per_example.cpp``, ``sampling.cpp``,
``sparse_adam.cpp``, ``word2vec.cpp``, ``bindings.cpp``), built on first use.

``torch.utils.cpp_extension`` compiles it once per machine and PyTorch version (1-3 minutes;
needs a C++ compiler and ``ninja``, found next to this Python without activating its
environment) into its cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``), saying so on stderr; later processes load the cached build.
A lock left by a killed build is removed once :data:`STALE_LOCK_S` old. If it cannot be built,
:func:`extension` returns None and says why in :func:`unavailable_reason`: the Python path,
which computes the same thing, is used instead.

The extension's functions: ``sampled_softmax_core`` (a sampled loss, softmax or sigmoid head,
from given columns), ``per_example_core`` (the same over each example's own noise),
``sampled_softmax_sampled`` (the uniform or log-uniform draw on the CPU, then the loss),
``sparse_row_adam_`` (``SparseRowAdam``'s sparse step), ``word2vec_train_`` (word2vec's training
loop, :mod:`sampled_softmax.apps.word2vec`), and ``core_forward`` /
``core_backward`` for the traced operators. Which caller uses it, and when, is
decided in :mod:`._dispatch` only.
"""

from __future__ import annotations

import logging
import os
import threading

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SOURCES = tuple(os.path.join(_CSRC, name) for name in ("loss.cpp", "per_example.cpp", "sampling.cpp",
                                                            "sparse_adam.cpp", "word2vec.cpp", "bindings.cpp"))
_HEADERS = (os.path.join(_CSRC, "common.h"),)
# -fno-math-errno: sqrt in a loop vectorises only when it need not set errno. -march=native:
# the build is this machine's own (its name carries the CPU's features, so a cache shared with
# another kind of CPU never loads it there); where the compiler refuses it, the portable flags.
_PORTABLE_CFLAGS = ["-O3", "-fno-math-errno"]
_NATIVE_CFLAGS = _PORTABLE_CFLAGS + ["-march=native"]
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
    # native build another CPU. The sources' folder too: PyTorch's build rebuilds whenever the
    # source paths in its build file change, so two checkouts sharing one name would rebuild
    # each other's module on every first load (minutes each).
    import hashlib

    digest = hashlib.sha1(_CSRC.encode())
    for path in _SOURCES + _HEADERS:
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(" ".join(cflags).encode() + _cpu_features().encode())
    return "sampled_softmax_core_" + digest.hexdigest()[:12]


def extension():
    """The compiled extension module, or None when it cannot be built."""
    if "ext" in _state:
        return _state["ext"]
    with _lock:
        if "ext" not in _state:
            _state["ext"] = _build()
    return _state["ext"]


def loaded():
    """The extension if this process has already loaded it, else None: for work that is worth
    the compiled code only where it is at hand (never a build)."""
    return _state.get("ext")


def is_built() -> bool:
    """Whether this process has the extension already, or a build for this CPU is cached
    (loading it is quick)."""
    if _state.get("ext") is not None:
        return True
    try:
        return os.path.exists(os.path.join(build_dir(), _module_name(_NATIVE_CFLAGS) + ".so"))
    except Exception:  # noqa: BLE001 - no build tools: nothing is built
        return False


def unavailable_reason() -> str | None:
    extension()
    return _state.get("why")


# A build holds PyTorch's lock file in its build folder; a build killed on the way leaves it
# behind, and every later build would wait on it forever. One older than this is stale.
STALE_LOCK_S = 600.0
_LOCK_POLL_S = 1.0


def build_dir(cflags=None) -> str:
    """Where the extension for ``cflags`` (default: this CPU's native flags) is built and cached."""
    from torch.utils.cpp_extension import _get_build_directory

    return _get_build_directory(_module_name(cflags or _NATIVE_CFLAGS), verbose=False)


def _wait_for_lock(folder: str, stale_s: float = STALE_LOCK_S) -> None:
    """Wait while another process builds in ``folder``; remove its lock once older than
    ``stale_s`` (a killed build's), saying so. Bounded: at most ``stale_s`` seconds."""
    import time

    lock = os.path.join(folder, "lock")
    said = False
    while os.path.exists(lock):
        try:
            age = time.time() - os.path.getmtime(lock)
        except OSError:  # removed meanwhile
            break
        if age >= stale_s:
            log.warning("sampled_softmax: removing a stale build lock %s (%.0f s old: a build that was killed); "
                        "building again", lock, age)
            try:
                os.remove(lock)
            except OSError:
                pass
            break
        if not said:
            _say(f"sampled_softmax: another process is building the compiled core in {folder}; waiting for it "
                 f"(at most {stale_s - age:.0f} s)")
            said = True
        time.sleep(_LOCK_POLL_S)


def _say(message: str) -> None:
    # A build blocks the first call for minutes: say so where a user sees it (stderr), not only
    # in a log that is off by default.
    import sys

    print(message, file=sys.stderr, flush=True)


def _progress(start: float, every_s: float = 30.0) -> threading.Event:
    """Say every ``every_s`` seconds that the build is still running, until the returned
    event is set."""
    import time

    done = threading.Event()

    def tick():
        while not done.wait(every_s):
            _say(f"sampled_softmax: still building the compiled core ({time.perf_counter() - start:.0f} s) ...")

    threading.Thread(target=tick, daemon=True).start()
    return done


def _ninja_on_path() -> None:
    """Put the ``ninja`` of this environment (the ``torch`` extra installs it next to Python)
    first on PATH: found without activating the environment, and always the same one (another
    ninja's build log makes PyTorch rebuild from scratch)."""
    import sys

    here = os.path.dirname(sys.executable)
    folders = [here] if os.path.exists(os.path.join(here, "ninja")) else []
    try:
        import ninja  # the PyPI package: its binary lives in its own folder

        folders.append(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    path = os.environ.get("PATH", "")
    for folder in reversed(folders):
        if folder and folder not in path.split(os.pathsep)[:1]:
            path = folder + os.pathsep + path
    os.environ["PATH"] = path


def _build():
    if os.environ.get("SAMPLED_SOFTMAX_NO_COMPILE"):
        _state["why"] = "SAMPLED_SOFTMAX_NO_COMPILE is set"
        return None
    try:
        from torch.utils.cpp_extension import load
    except Exception as e:
        _state["why"] = f"{type(e).__name__}: {e}"
        return None
    import shutil
    import time

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:  # say so plainly, before PyTorch's build tries it
        _state["why"] = f"no C++ compiler: {compiler!r} not found on PATH (install g++, or set CXX)"
        log.warning("sampled_softmax: compiled core unavailable (%s); using the Python path", _state["why"])
        return None
    _ninja_on_path()
    for cflags in (_NATIVE_CFLAGS, _PORTABLE_CFLAGS):
        name = _module_name(cflags)
        try:
            folder = build_dir(cflags)
            _wait_for_lock(folder)
            cached = os.path.exists(os.path.join(folder, name + ".so"))
            if not cached:
                _say(f"sampled_softmax: building the compiled core for this machine in {folder} (once; about "
                     f"1-3 minutes; SAMPLED_SOFTMAX_NO_COMPILE=1 skips it) ...")
            start = time.perf_counter()
            ticker = None if cached else _progress(start)
            try:
                ext = load(name=name, sources=list(_SOURCES), extra_cflags=cflags, verbose=False)
            finally:
                if ticker is not None:
                    ticker.set()
            if not cached:
                _say(f"sampled_softmax: compiled core built in {time.perf_counter() - start:.0f} s")
            _state["where"] = folder
            return _check_enums(ext)
        except Exception as e:  # no compiler, no ninja, a failed build: the Python path remains
            _state["why"] = f"{type(e).__name__}: {_first_error_line(str(e))}"
    log.warning("sampled_softmax: compiled core unavailable (%s); using the Python path", _state["why"])
    return None


def _check_enums(ext):
    """The build, if it reads the draw, distribution and head enums as Python names them; else
    None (a build that would misread them is never used)."""
    from ..samplers import DistributionKind, DrawKind
    from ._autograd import HeadKind

    for name, kind, exported in (("DrawKind", DrawKind, ext.DRAW), ("DistributionKind", DistributionKind,
                                                                   ext.DISTRIBUTION), ("HeadKind", HeadKind, ext.HEAD)):
        ours = {member: int(kind[member]) if member in kind.__members__ else None for member in exported}
        if dict(exported) != ours:
            _state["why"] = f"its {name} values {dict(exported)} differ from Python's {ours}"
            log.warning("sampled_softmax: compiled core unavailable (%s); using the Python path", _state["why"])
            return None
    return ext


def _first_error_line(message: str) -> str:
    """The compiler's own message: its first ``error:`` line, or a shell's ``not found``
    (no compiler), if there is one (ninja's last line says only that the build stopped), else
    the message's last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "not found" in line or "No such file" in line]
    return (errors or lines or [""])[0 if errors else -1]


def describe() -> str:
    """One line for ``sampled-softmax info``: built or not, where, for which CPU."""
    if os.environ.get("SAMPLED_SOFTMAX_NO_COMPILE"):
        return "compiled core: off (SAMPLED_SOFTMAX_NO_COMPILE is set)"
    if _state.get("why"):  # this process tried and failed
        return f"compiled core: unavailable ({_state['why']})"
    import platform

    try:
        folder = build_dir()
    except Exception as e:  # noqa: BLE001 - no torch build tools
        return f"compiled core: unavailable ({type(e).__name__}: {e})"
    cpu = f"{platform.machine()} ({len(_cpu_features().split())} CPU feature flags in its name)"
    so = os.path.join(folder, _module_name(_NATIVE_CFLAGS) + ".so")
    if os.path.exists(so):
        return f"compiled core: built for this CPU, {cpu}, in {folder}"
    return f"compiled core: not built yet (the first call builds it, 1-3 minutes) for {cpu} in {folder}"
