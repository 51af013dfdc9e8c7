# `make test` builds .venv from nothing (pinned dev constraints) and runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all venv test dist docs bench demo clean

all: venv

$(STAMP): pyproject.toml constraints/dev.txt constraints/dev-requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints/dev.txt -e . -r constraints/dev-requirements.txt
	touch $(STAMP)

venv: $(STAMP)

# The Keras layer's tests run once per Keras backend (the main run uses TensorFlow's). Tests run
# in TEST_WORKERS processes (pytest-xdist; 0 runs them in this one), the slowest listed last.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS)
KERAS_TESTS := tests/frontends/keras tests/cross/test_bad_input.py tests/cross/test_properties.py tests/cross/test_heads.py tests/cross/test_exclude_true.py -k keras
# FAST=1: a quick local loop, without the tests marked slow nor the second and third Keras backends.
ifdef FAST
test: $(STAMP)
	$(PYTEST) -m "not slow"
else
test: $(STAMP)
	$(PYTEST) --durations=15
	KERAS_BACKEND=jax $(PYTEST) -p no:cacheprovider $(KERAS_TESTS)
	KERAS_BACKEND=torch $(PYTEST) -p no:cacheprovider $(KERAS_TESTS)
endif

# The wheel and sdist as they would be published, with their metadata checked.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

# The documentation site (MkDocs Material, API pages from the docstrings) in site/; any
# warning is an error. `make test` builds it too and runs every Python block of its pages.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The main job: full, sampled and adaptive softmax side by side (about three minutes, no download).
demo: $(STAMP)
	$(VENV)/bin/sampled-softmax demo

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache
