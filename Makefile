# Each target sets up .venv itself: a fresh clone needs only Python >= 3.11 (and Node for the CDK checks).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
STATE  ?= .tessera/local

.PHONY: run test bench lint install layer-lock clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,infra,dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tessera local up --state $(STATE) --demo

test: $(STAMP)
	@command -v node >/dev/null || { echo "make test: Node.js is required for the CDK checks (tests/infra). Install Node.js >= 18 (e.g. apt-get install nodejs)."; exit 2; }
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy layers/tessera client/tessera_client tests

# Resolve the Lambda layer's wheels again from pyproject.toml (needs the package index)
layer-lock: $(STAMP)
	$(PY) -m infra.constructs.layer

clean:
	rm -rf $(VENV) cdk.out .pytest_cache .mypy_cache .ruff_cache
