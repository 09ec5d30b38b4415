# One entry point. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo serve test lint typecheck bench bench-quick clean

# The client (client/, distribution agentfleet-client) is on no package index: pip takes it
# from the folder, and the fleet's dependency on it is met by that install.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./client -e '.[dev]'
	@touch $(STAMP)

## demo: start a private fleet, run agent runs and a tool call, show them finish, stop.
demo: $(STAMP)
	$(PY) -m ops.demo

## serve: the demo, then keep the fleet up (Ctrl-C stops it).
serve: $(STAMP)
	$(PY) -m ops.demo --serve

## test: lint, type-check, then the whole suite against real Redis and real workers.
test: lint typecheck
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check client workers tasks producer ops tests examples

# mypy cannot follow the editable install's import hook: it reads the folders through links
# named as they are installed (pyproject.toml, [tool.mypy]).
typecheck: $(STAMP)
	@mkdir -p .typecheck/agentfleet
	@ln -sfn ../../client/agentfleet/client .typecheck/agentfleet/client
	@ln -sfn ../../tasks .typecheck/agentfleet/tasks
	@ln -sfn ../../workers .typecheck/agentfleet/workers
	@ln -sfn ../../producer .typecheck/agentfleet/producer
	@ln -sfn ../../ops/simulator .typecheck/agentfleet/simulator
	$(VENV)/bin/mypy

## bench: agentfleet next to stock Celery on one private Redis (ops/bench/).
bench: $(STAMP)
	$(PY) -m ops.bench

bench-quick: $(STAMP)
	$(PY) -m ops.bench --quick

clean:
	rm -rf $(VENV) .agentfleet .mypy_cache .ruff_cache .typecheck
