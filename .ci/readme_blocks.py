"""Run the README's Python blocks that need only what this environment has installed, each in
a fresh namespace and folder, as a user would paste them (used by .ci/clean_room)."""

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


def main(readme: str) -> int:
    with open(readme) as f:
        blocks = FENCE.findall(f.read())
    ran = 0
    for i, code in enumerate(blocks):
        # Keras blocks need Keras and any one backend (it picks an installed one).
        if "init_process_group" in code:  # a block for torchrun: tests/distributed runs it on 2 processes
            print(f"block {i}: skipped (runs under torchrun)")
            continue
        missing = sorted(m for m in imported_modules(code) if importlib.util.find_spec(m) is None)
        if missing:
            print(f"block {i}: skipped (needs {', '.join(missing)})")
            continue
        with tempfile.TemporaryDirectory() as folder:
            os.chdir(folder)
            exec(compile(code, f"README block {i}", "exec"), {"__name__": "__readme__"})
        print(f"block {i}: ran")
        ran += 1
    if not ran:
        print("no block ran", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
