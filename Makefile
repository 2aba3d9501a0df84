# The set-up commands of the README: `make demo`, `make test` and `make test-fast`.
# All create .venv with the project's own files and need only Python 3.11+ (and, for the
# browser tests, root access to install Debian's chromium). `make demo` installs only what the
# demo and the viewer need; `make test` adds Ray, playwright, wsidicomizer and the dev tools.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.micromet-installed
DEMO_STAMP := $(VENV)/.micromet-demo-installed
DEMO_DIR ?= demo_out
# The quick subset: no end-to-end runs over ~10 s, no browser, no Ray (docs in README).
FAST_MARKERS := not slow and not browser and not ray

.PHONY: demo test test-fast install install-demo lint typecheck unit browser-deps clean

$(DEMO_STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c requirements/constraints.txt -e '.[viewer]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c requirements/constraints.txt -e '.[viewer,ray,dev]'
	touch $(DEMO_STAMP) $(STAMP)

install-demo: $(DEMO_STAMP)

install: $(STAMP)

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

browser-deps: node_modules/.package-lock.json
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: $(DEMO_STAMP) node_modules/.package-lock.json
	$(VENV)/bin/micromet demo --out $(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests scripts
	$(VENV)/bin/mypy

test: $(STAMP) browser-deps lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "$(FAST_MARKERS)"

clean:
	rm -rf $(VENV) node_modules $(DEMO_DIR)
