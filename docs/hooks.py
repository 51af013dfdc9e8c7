"""Build-time pages made from files outside ``docs/``: the full benchmark results, the
changelog and the benchmark plots, so that each lives in one place in the repository."""

import os
import re

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


_SECTION = re.compile(r'^--8<-- "README\.md:([\w-]+)"$', re.M)


def _readme_section(name):
    text = _read("README.md")
    start, end = f"<!-- --8<-- [start:{name}] -->", f"<!-- --8<-- [end:{name}] -->"
    return text[text.index(start) + len(start):text.index(end)]


def on_page_markdown(markdown, page, config, files):
    # A page made of README sections gets them here rather than from pymdownx.snippets, so that
    # README's image links (docs/images/..., relative to the repository's root) can be made
    # relative to the page before MkDocs checks them.
    depth = page.file.src_uri.count("/")
    markdown = _SECTION.sub(lambda m: _readme_section(m.group(1)), markdown)
    return markdown.replace("](docs/images/", "](" + "../" * depth + "images/")
