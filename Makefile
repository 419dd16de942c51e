# The README's two commands. Each sets up .venv first (plugins/bootstrap.py; instant when current).
#   make demo   main job on the embedded default pipeline: offline, CPU, small random model (sftpack run)
#   make test   the whole test suite (unit + real-CLI integration), offline, CPU
#   make gpu-kit  prepare the GPU kit here (wheels + Qwen2.5 tokenizer) for one call on a GPU machine
PY := .venv/bin/python
PYTEST_ARGS ?=
# where make demo writes (a re-run into the same folder skips the unchanged stages)
DEMO_OUT ?= runs/demo
# pytest-xdist workers; each worker's processes use 1 CPU thread (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: setup demo test gpu-kit

setup:
	python3 plugins/bootstrap.py

demo: setup
	$(PY) -m sftpack run benchmarks/pipelines/tiny_cpu.yaml --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

gpu-kit: setup
	$(PY) benchmarks/gpu/prepare.py
