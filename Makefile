# One entry point for developers and CI alike.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make run` needs the runtime dependencies only, not the dev tools (mypy, playwright, ...).
RUN_STAMP := $(VENV)/.installed-runtime

.PHONY: install run test check lint typecheck bench fmt clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/gateway serve

test: $(STAMP)
	bash .ci/system-deps
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

fmt: $(STAMP)
	$(VENV)/bin/ruff format gateway tests bench
	$(VENV)/bin/ruff check --fix gateway tests bench

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
