# One entry point for developers and CI alike.
VENV ?= .venv
# The versions installed: the newest CI has tested, pinned (see refresh-constraints below).
CONSTRAINTS ?= .ci/constraints-new.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make run` needs the runtime dependencies only, not the dev tools (mypy, playwright, ...).
RUN_STAMP := $(VENV)/.installed-runtime

.PHONY: install run test test-min check lint typecheck bench fmt clean refresh-constraints

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -c $(CONSTRAINTS)
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e . -c $(CONSTRAINTS)
	touch $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/gateway serve

test: $(STAMP)
	bash .ci/system-deps
	$(PY) -m pytest -q

# The whole suite again at every dependency's declared minimum, in a venv of its own.
test-min:
	$(MAKE) test VENV=.venv-min CONSTRAINTS=.ci/constraints-min.txt

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

# Re-pin .ci/constraints-new.txt to the newest releases within pyproject.toml's ranges (a
# scratch venv, no constraints); then `make check`, and commit the file if it passes.
refresh-constraints:
	rm -rf .venv-refresh
	python3 -m venv .venv-refresh
	.venv-refresh/bin/python -m pip install -q --upgrade pip
	.venv-refresh/bin/python -m pip install -q -e '.[dev]'
	{ echo '# The newest versions CI has tested, all of them pinned: `make install` and CI use them,'; \
	  echo '# so a new release cannot break the build unseen. Regenerate with `make refresh-constraints`.'; \
	  .venv-refresh/bin/python -m pip freeze --exclude-editable; } > .ci/constraints-new.txt
	rm -rf .venv-refresh

clean:
	rm -rf $(VENV) .venv-min .mypy_cache .pytest_cache .ruff_cache
