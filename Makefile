# invmesh: `make run` starts the whole system, `make test` runs the suite.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto')
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
BENCH_QUICK ?=
BENCH_ARGS ?=
BENCH_FLAGS := $(if $(filter 1 yes true,$(BENCH_QUICK)),--quick) $(BENCH_ARGS)

.PHONY: run test chromium screenshots protos protos-check docs lint image bench bench-quick clean

## run: install, generate code if the protos changed, start every service (Ctrl-C stops them)
run: $(VENV)/.installed $(VENV)/.generated
	$(BIN)/invmesh up

## test: install what the tests need, then run them (they fail if protos/ and invmesh/ disagree),
##       on TEST_WORKERS processes (each runs its own servers and databases; 0 runs them in this one);
##       PYTEST_ARGS='-m "not slow"' leaves out the slow suites CI runs
test: $(VENV)/.installed chromium
	$(BIN)/pytest --numprocesses $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## chromium: Debian's Chromium, which the browser tests drive (tests/browser), installed when missing
##           and run as root; without it they skip, or fail under CI=true
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## screenshots: run the browser tests, which write docs/console/<screen>.png; commit the changed ones
screenshots: $(VENV)/.installed chromium
	INVMESH_SCREENSHOTS=1 $(BIN)/pytest --numprocesses $(TEST_WORKERS) --dist worksteal -m browser $(PYTEST_ARGS)

## protos: regenerate the invmesh.*.v1 package from protos/
protos: $(VENV)/.installed
	$(BIN)/python -m launcher.codegen
	@touch $(VENV)/.generated

## protos-check: fail if the generated code has drifted from protos/
protos-check: $(VENV)/.installed
	$(BIN)/python -m launcher.codegen --check

## docs: regenerate docs/configuration.md from the settings in mesh/config.py
docs: $(VENV)/.installed
	$(BIN)/python -m launcher.settings_doc

## lint: ruff (lint and format), mypy --strict (pyproject.toml), buf lint, hadolint (the Containerfile)
##       and shellcheck (the shell scripts)
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m launcher.codegen --lint
	$(BIN)/hadolint deploy/image/Containerfile
	$(BIN)/shellcheck deploy/image/build.sh deploy/observability/check.sh .ci/run

## image: build the OCI image localhost/invmesh:<version> (and :latest) with podman
##        (deploy/image/build.sh: installs podman, runc and mmdebstrap from Debian when missing
##        and run as root, makes the base image, builds the wheels on the host, builds offline)
image: $(VENV)/.installed $(VENV)/.generated
	deploy/image/build.sh

## bench: every route, two mixes and logins side by side with the FastAPI peer, and issue 19's
##        ceilings, on SQLite and PostgreSQL, with a chart (bench/README.md); needs PostgreSQL on 127.0.0.1:5432 and wrk (installed from Debian when
##        missing and run as root); BENCH_QUICK=1 for short runs,
##        BENCH_ARGS='--databases sqlite --scenarios movement' and the like for a subset
bench: $(VENV)/.installed $(VENV)/.generated $(VENV)/.bench-installed
	@command -v wrk >/dev/null || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.run $(BENCH_FLAGS)

## bench-quick: the same with short runs, in about 7 minutes
bench-quick:
	$(MAKE) bench BENCH_QUICK=1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[dev]'
	@touch $@

# The bench extra (matplotlib, for the chart): make bench alone needs it.
$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[dev,bench]'
	@touch $@

$(VENV)/.generated: $(PROTOS) | $(VENV)/.installed
	$(BIN)/python -m launcher.codegen
	@touch $@
