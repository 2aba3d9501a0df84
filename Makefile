# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with the project's own files and need only Python 3.11+ (and, for the
# browser tests, root access to install Debian's chromium).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.micromet-installed
DEMO_DIR ?= demo_out

.PHONY: demo test install lint typecheck unit browser-deps clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c requirements/constraints.txt -e '.[viewer,ray,dev]'
	touch $(STAMP)

install: $(STAMP)

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

browser-deps: node_modules/.package-lock.json
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: $(STAMP) node_modules/.package-lock.json
	$(VENV)/bin/micromet demo --out $(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests scripts
	$(VENV)/bin/mypy

test: $(STAMP) browser-deps lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) node_modules $(DEMO_DIR)
