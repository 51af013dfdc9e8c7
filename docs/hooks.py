"""Build-time pages made from files outside ``docs/``: the full benchmark results, the
changelog and the benchmark plots, so that each lives in one place in the repository."""

import os

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOTS = ("time_memory_vs_V.png", "time_vs_S.png")


def _read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def on_files(files, config):
    for plot in PLOTS:
        files.append(File.generated(config, f"img/{plot}", abs_src_path=os.path.join(ROOT, "benchmarks", "plots", plot)))
    full = _read("BENCHMARKS.md").replace("(benchmarks/plots/", "(img/")
    files.append(File.generated(config, "benchmarks-full.md", content=full))
    files.append(File.generated(config, "changelog.md", content=_read("CHANGELOG.md")))
    return files
