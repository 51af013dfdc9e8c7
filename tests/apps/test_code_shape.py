"""The shape the code keeps (issue 33): every call described once, not as a long positional list;
files of one topic. A private function with more than 8 positional parameters, a source file of
600 lines or more, or a ``torch/functional.py`` past 400 lines fails here, naming it."""

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "sampled_softmax"


def _python_files():
    return sorted(p for p in SRC.rglob("*.py") if "egg-info" not in str(p))


def test_no_private_function_takes_more_than_8_positional_parameters():
    too_long = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not node.name.startswith("_") or node.name.startswith("__"):
                continue
            positional = [a.arg for a in node.args.posonlyargs + node.args.args]
            if positional and positional[0] in ("self", "cls", "ctx"):
                positional = positional[1:]
            if len(positional) > 8:
                too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({len(positional)})")
    assert not too_long, "private functions with more than 8 positional parameters: " + ", ".join(too_long)


def test_source_files_stay_small():
    lines = {str(p.relative_to(SRC)): p.read_text().count("\n") for p in _python_files()}
    assert lines["torch/functional.py"] < 400, lines["torch/functional.py"]
    big = {name: n for name, n in lines.items() if n >= 600}
    assert not big, f"files of 600 lines or more: {big}"
