# nlfpipe: the two commands are `make run VIDEO=...` and `make test`; both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf
VIDEO ?=
RUN_ARGS ?=

.PHONY: run test lint protos setup clean bench

setup: $(STAMP) $(BUF)

$(STAMP): pyproject.toml scripts/system_packages.sh scripts/gen_protos.py scripts/link_source.py $(shell find protos -name '*.proto')
	bash scripts/system_packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	mkdir -p gen/nlfpipe && touch gen/nlfpipe/__init__.py
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) scripts/gen_protos.py
	$(PY) scripts/link_source.py
	touch $(STAMP)

$(BUF): package.json
	npm install --silent --no-audit --no-fund --no-package-lock

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

run: setup
	@test -n "$(VIDEO)" || (echo "usage: make run VIDEO=<path|URL|YouTube id> [RUN_ARGS='--max-persons 2 ...']" >&2; exit 2)
	$(VENV)/bin/nlfpipe run "$(VIDEO)" $(RUN_ARGS)

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(BUF) lint protos

clean:
	rm -rf $(VENV) gen node_modules
