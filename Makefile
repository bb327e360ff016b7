# Two commands do everything on a fresh machine: `make run` and `make test` (`make check` is the
# quick loop while editing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run doctor firestore-emulator pubsub-emulator test check lint format lock bench mutation clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

## Run the function on :8080 (with the bundled Stripe emulator when no key is configured).
run: $(VENV)/.installed
	$(PY) -m devtools.run_local

## Beside a running `make run` (another terminal): check its setup with `python -m checkout doctor`.
doctor: $(VENV)/.installed
	$(PY) -m devtools.local_doctor

# The end-to-end browser tests build the README's React component: npm installs its pinned
# packages (tests/e2e/package-lock.json). Without npm those tests skip, saying why.
E2E_DEPS := tests/e2e/node_modules/.package-lock.json
$(E2E_DEPS): tests/e2e/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: the end-to-end browser tests will be skipped"; \
	fi

## Google's Firestore emulator on :8086, for ORDER_LEDGER=firestore locally (docs/ledger.md).
firestore-emulator: $(VENV)/.installed
	$(PY) -m devtools.firestore_emulator --port 8086

## Google's Pub/Sub emulator on :8087, with the topic and the worker's subscription (docs/pubsub.md).
pubsub-emulator: $(VENV)/.installed
	$(PY) -m devtools.pubsub_emulator --port 8087

# pytest-xdist: one worker per logical CPU (JOBS=1: one process); each worker starts its own
# emulators (docs/testing.md#how-long-it-takes). `make test` gives a worker a whole module at a
# time (loadscope), so a module's fixtures (gcloud, a browser) are set up once; `make check`, whose
# module fixtures are cheap, spreads single tests (load), which balances the two workers better.
# `make test`'s workers wait on emulators, processes and deadlines much of the time, so it runs
# one more worker than there are CPUs (TEST_JOBS); JOBS=N sets both targets' count.
JOBS ?= logical
TEST_JOBS ?= $(if $(filter logical,$(JOBS)),$(shell $(PYTHON) -c "import os; print((os.cpu_count() or 1) + 1)"),$(JOBS))
PARALLEL = $(if $(filter 1,$(2)),-p no:xdist,-n $(2) --dist $(1))

## Lint, then type-check while every test runs (docs/testing.md#how-long-it-takes).
# mypy (12 s of one core without its cache) runs beside pytest, whose workers often wait on
# an emulator, a process or a deadline; its report is printed after the tests', and either
# failing fails `make test`.
test: $(VENV)/.installed $(E2E_DEPS)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	types=$$(mktemp); $(PY) -m mypy >$$types 2>&1 & mypy=$$!; \
	$(PY) -m pytest $(call PARALLEL,loadscope,$(TEST_JOBS)); tests=$$?; \
	wait $$mypy; typed=$$?; cat $$types; rm -f $$types; \
	exit $$((typed ? typed : tests))

# What `make check` leaves to `make test`: the tests that need a tool from the machine, start
# Google's emulators or take seconds each (docs/testing.md#markers-what-needs-a-tool-from-the-machine).
QUICK := not browser and not gcloud and not curl and not firestore and not pubsub and not deploy_step and not slow

## The edit-test loop, under a minute: lint, types, and the tests that need no emulator, browser,
## gcloud or slow process.
check: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest $(call PARALLEL,load,$(JOBS)) -m "$(QUICK)"

## Re-pin requirements.txt and requirements-dev.txt, every transitive dependency with hashes, from
## requirements.in and requirements-dev.in (pip-tools).
lock: $(VENV)/.installed
	$(VENV)/bin/pip-compile $(PIN) -o requirements.txt requirements.in
	$(VENV)/bin/pip-compile $(PIN) -o requirements-dev.txt requirements-dev.in

PIN := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The cold-start yardstick: Express and the Stripe Node SDK, pinned in bench/express/package-lock.json.
# Without npm, make bench compares the cold start with the bare Python function instead.
BENCH_NODE := bench/express/node_modules/.package-lock.json
$(BENCH_NODE): bench/express/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd bench/express && npm ci --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: the cold start is compared with the bare Python function only"; \
	fi

## Benchmarks (not tests): see docs/performance.md.
bench: $(VENV)/.installed $(BENCH_NODE)
	$(PY) -m bench.run

## Mutation testing with mutmut (not part of `make test`; docs/testing.md#mutation-testing). The
## modules and their tests are [tool.mutmut] in pyproject.toml; MUTANTS selects the mutants to
## run (mutmut's names, fnmatch patterns): whole modules, or only some functions of one.
MUTANTS ?= \
	'checkout.api.webhook.x__verified_event__mutmut_*' \
	'checkout.api.webhook.x__check_signature__mutmut_*' \
	'checkout.api.webhook.x__fresh_header__mutmut_*' \
	'checkout.api.webhook.x__event_in__mutmut_*' \
	'checkout.api.routes.x__image_id_from__mutmut_*' \
	'checkout.api.routes.x__idempotency_key_from__mutmut_*' \
	'checkout.api.routes.x__stripe_idempotency_key__mutmut_*' \
	'checkout.api.routes.x__session_id_from__mutmut_*' \
	'checkout.api.http.*' \
	'checkout.api.limits.*' \
	'checkout.orders.catalogue.*' \
	'checkout.orders.model.*' \
	'checkout.orders.ledger.*'
mutation: $(VENV)/.installed
	rm -rf mutants && mkdir mutants
	$(VENV)/bin/mutmut run $(MUTANTS) > mutants/run.log 2>&1 || (tail -c 4000 mutants/run.log; exit 1)
	$(PY) -m devtools.mutation_report $(MUTANTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants
