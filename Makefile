# Two commands on a fresh machine with Python >= 3.11:  `make demo`  and  `make test`.
# Each creates the local virtual environment .venv on first use (idempotent afterwards).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,examples,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/discrete_latent.py

lint: $(STAMP)
	$(PY) -m ruff check ppl tests examples bench

test: $(STAMP) lint
	$(PY) -m pytest

# Rerun bench/*.py and rewrite every table of docs/benchmarks.md (between its <!-- bench:… --> markers), with the
# command, date, machine, versions and load average beside each. Full: 19 min at load 2-5 on 2 cores; quick: 15 min
# at load 11-14 (measured 2026-11-30).
bench: $(STAMP)
	$(PY) bench/regenerate.py

bench-quick: $(STAMP)
	$(PY) bench/regenerate.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .jax_cache
