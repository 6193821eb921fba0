# The two commands a newcomer runs: `make audit` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: audit test test-slow test-all bench lint setup clean system-packages

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	$(PIP) install --quiet --no-deps torchattacks==3.5.1  # peer; see pyproject's dev extra
	touch $(STAMP)

audit: $(STAMP)
	$(VENV)/bin/dlsec audit

# the suite's Debian packages (Chromium for the report's browser tests, Fashion-MNIST)
system-packages:
	bash .ci/system-packages

test: $(STAMP) system-packages
	$(PY) -m pytest -q

test-slow: $(STAMP) system-packages
	$(PY) -m pytest -q -m slow

test-all: $(STAMP) system-packages
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
