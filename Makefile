# The README's two commands. Each sets up .venv first (plugins/bootstrap.py; instant when current).
#   make demo   main job on the embedded default pipeline: offline, CPU, small random model (sftpack run)
#   make test   the whole test suite (unit + real-CLI integration), offline, CPU
#   make gpu-kit  prepare the GPU kit here (wheels + Qwen2.5 tokenizer) for one call on a GPU machine
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test gpu-kit

setup:
	python3 plugins/bootstrap.py

demo: setup
	$(PY) -m sftpack run benchmarks/pipelines/tiny_cpu.yaml --out runs/demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

gpu-kit: setup
	$(PY) benchmarks/gpu/prepare.py
