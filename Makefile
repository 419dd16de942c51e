# The README's two commands. Each sets up .venv first (plugins/bootstrap.py; instant when current).
#   make demo   main job on the embedded default: offline, CPU, tiny model
#   make test   the whole test suite (unit + real-CLI integration), offline, CPU
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test

setup:
	python3 plugins/bootstrap.py

demo: setup
	$(PY) -m sftpack demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)
