# The course's front door. `make lab` opens it, `make test` proves it; both bootstrap a fresh
# machine first (.venv from requirements.txt: tlhelpers editable with its extras, offline assets).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8888
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# Without this, OpenMP threads spin and torch slows down badly on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup lab lint test unit notebooks bench simulator book lock clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@echo "Installing the course environment into $(VENV) (a few minutes the first time)..."
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@touch $@

setup: $(STAMP)  ## venv + package + offline weights and data
	$(PY) -m tlhelpers.assets fetch

lab: setup  ## open the course in JupyterLab
	@echo "Opening JupyterLab on http://$(HOST):$(PORT)/lab (Ctrl-C to stop)"
	$(VENV)/bin/jupyter lab notebooks/ --ip=$(HOST) --port=$(PORT) --no-browser $(ROOT_FLAG)

# The tests run with no network at all (scripts/offline: a network namespace, loopback only);
# setup, before them, is the one step that needs the package registry.
# nbval runs each numbered notebook with its exercise solutions in place (scripts/answer_keys.py
# writes those merged copies to test-artifacts/answer-keys/), so every solution runs in CI too.
# The node packages the tests use (axe-core, ESLint; package-lock.json), from npm like the Python ones
# from PyPI; without npm the accessibility tests skip and the JavaScript is not linted (both fail under CI).
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the accessibility tests will skip (install Debian's nodejs)"; fi

lint: setup $(NODE_STAMP)  ## ruff over the Python, ESLint over the simulator's and the website's JavaScript
	$(VENV)/bin/ruff check tlhelpers tests scripts benchmarks
	@if [ -x node_modules/.bin/eslint ]; then node_modules/.bin/eslint tlhelpers/simulator/static scripts/book_static; \
	else echo "ESLint is not installed (npm ci): the JavaScript was not linted"; [ -z "$$CI" ]; fi

test: setup $(NODE_STAMP) lint  ## the whole suite, offline: lint, unit tests, browser tests (axe-core included), every notebook (solutions included) through nbval
	rm -rf test-artifacts/answer-keys
	$(PY) scripts/answer_keys.py --out test-artifacts/answer-keys >/dev/null
	scripts/offline $(PY) -m pytest tests notebooks/simulator.ipynb test-artifacts/answer-keys --nbval-lax --nbval-current-env -p no:cacheprovider --durations=30

unit: setup lint  ## lint (ruff, ESLint) and the package's unit tests (fast), offline
	scripts/offline $(PY) -m pytest tests --ignore=tests/ui --ignore=tests/series --ignore=tests/distributed --ignore=tests/readme -p no:cacheprovider

notebooks: setup  ## re-execute every notebook in place so stored outputs match the code
	$(PY) scripts/run_notebooks.py

bench: setup  ## measure ratios side by side; writes benchmarks/results.md
	$(PY) benchmarks/run.py

simulator: setup  ## the freeze-toggle simulator as a standalone page (Voila)
	@echo "Serving the simulator on http://$(HOST):$(PORT) (Ctrl-C to stop)"
	$(VENV)/bin/voila notebooks/simulator.ipynb --no-browser --port=$(PORT) --Voila.ip=$(HOST)

# The notebooks' stored outputs as a static site (nbconvert; nothing re-executed, nothing from a CDN).
book: setup  ## the course as a website in build/book (then: cd build/book && python -m http.server)
	$(PY) scripts/build_book.py --out build/book

lock: $(STAMP)  ## record the exact versions installed now in constraints.txt (after changing pyproject.toml)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	{ head -2 constraints.txt; $(PY) -m pip freeze --exclude-editable --disable-pip-version-check; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) test-artifacts build node_modules
