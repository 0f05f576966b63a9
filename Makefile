# One venv, pinned packages from pyproject.toml. `make install` is idempotent: it reinstalls
# only when pyproject.toml changed since the last successful install.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean compose-test

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/kd3 demo

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

# Opt-in, minutes, root + Docker engine + debootstrap (not part of `make test`): builds stand-in
# base images and kd3:cpu, runs the compose stack in Docker and checks it (docker/compose-test/).
compose-test: install
	$(BIN)/python docker/compose-test/run.py $(COMPOSE_TEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
