# The README's two commands: `make demo` and `make test`. Both set everything up first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup demo test lint package screenshots bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/rsclip demo --out demo-output

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(VENV)/bin/rsclip bench

package: setup
	$(PY) scripts/package_plugin.py

screenshots: setup
	$(PY) scripts/screenshots.py

clean:
	rm -rf demo-output dist .pytest_cache
