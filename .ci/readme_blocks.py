"""Run the Python blocks of the README and of the given documentation pages that need only what
this environment has installed, each in a fresh namespace and folder, as a user would paste them
(used by .ci/clean_room)."""

import ast
import importlib.util
import os
import re
import sys
import tempfile

FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def imported_modules(code: str) -> set[str]:
    """Top-level modules a block imports (any of them: frameworks, flax, optax, ...)."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def main(*pages: str) -> int:
    blocks = []
    for page in pages:
        with open(page) as f:
            blocks += [(f"{os.path.basename(page)} block {i}", code) for i, code in enumerate(FENCE.findall(f.read()))]
    ran = 0
    for name, code in blocks:
        # Keras blocks need Keras and any one backend (it picks an installed one).
        if "init_process_group" in code:  # a block for torchrun: tests/distributed runs it on 2 processes
            print(f"{name}: skipped (runs under torchrun)")
            continue
        missing = sorted(m for m in imported_modules(code) if importlib.util.find_spec(m) is None)
        if missing:
            print(f"{name}: skipped (needs {', '.join(missing)})")
            continue
        with tempfile.TemporaryDirectory() as folder:
            os.chdir(folder)
            exec(compile(code, name, "exec"), {"__name__": "__readme__"})
        print(f"{name}: ran")
        ran += 1
    if not ran:
        print("no block ran", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
