# resnetlab: every target creates or reuses .venv and installs what it needs.
# On a machine without torch we install the local CPU wheel (torch==2.13.0) first, so pip never
# resolves `torch>=2.1` to a multi-GB CUDA build. A venv that already has torch keeps it.
PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.resnetlab-installed
PYTEST_ARGS ?=

.PHONY: help venv data browser demo test test-slow bench lint format clean

help:
	@echo "make demo | test | test-slow | bench | lint | data | clean"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,export,dense]"
	touch $@

venv: $(STAMP)

# Fashion-MNIST: files already present, else Debian's package (root + apt), else the official download.
# The fortunes text corpus (the transformer experiment): Debian's package where root + apt, else say so.
data: $(STAMP)
	@pkgs=""; \
	if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "$$RESNETLAB_DATA" ]; then pkgs="dataset-fashion-mnist"; fi; \
	if [ ! -f /usr/share/games/fortunes/fortunes ] && [ -z "$$RESNETLAB_DATA" ]; then pkgs="$$pkgs fortunes"; fi; \
	if [ -n "$$pkgs" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's$$pkgs"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null; \
	fi
	$(PY) -m resnetlab data fashion-mnist
	@$(PY) -m resnetlab data fortunes || echo "(only the transformer experiment needs the text corpus)"

# Headless Chromium checks the HTML reports in the tests; skipped (and said so) where apt is absent.
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the report tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

demo: data
	$(PY) -m resnetlab demo

# --timeout: the slowest test takes about 40 s on 2 cores; a blocked one fails at 300 s, by name.
test: data browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" --timeout 300 $(PYTEST_ARGS)

test-slow: data browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup -m slow --timeout 3600 $(PYTEST_ARGS)

bench: data
	$(PY) -m benchmarks

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks hubconf.py
	$(PY) -m ruff format --check src tests benchmarks hubconf.py

format: $(STAMP)
	$(PY) -m ruff format src tests benchmarks hubconf.py
	$(PY) -m ruff check --fix src tests benchmarks hubconf.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
