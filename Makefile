# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run firestore-emulator test lint format bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

## Run the function on :8080 (with the bundled Stripe emulator when no key is configured).
run: $(VENV)/.installed
	$(PY) -m devtools.run_local

## Google's Firestore emulator on :8086, for ORDER_LEDGER=firestore locally (docs/ledger.md).
firestore-emulator: $(VENV)/.installed
	$(PY) -m devtools.firestore_emulator --port 8086

## Lint, then run every test.
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## Benchmarks (not tests): see docs/performance.md.
bench: $(VENV)/.installed
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
