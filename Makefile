# Works with GNU make on Debian 12 (python3 3.11 + python3-venv). See README.md.
VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=
BIN := $(VENV)/bin
# Re-install only when pyproject.toml changes.
STAMP := $(VENV)/.installed

.PHONY: venv up test clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip 'setuptools>=68'
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

# A local 3-node cluster of real agent processes (data in .registry/, survives restarts);
# Ctrl-C stops it.
up: venv
	$(BIN)/registry up --nodes 3 --data-dir .registry

test: venv
	$(BIN)/python -m pytest -n auto $(PYTEST_ARGS)

# Removes the virtual environment too.
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
