# Two entry points for a fresh clone: `make demo` and `make test`. Each creates .venv when needed.
# torch is installed first as the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EDGELM := $(VENV)/bin/edgelm
DEMO_DIR := build/demo

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python compiles llama.cpp here (5-7 min on 2 cores, once: pip caches the wheel)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(EDGELM) init tiny-nope $(DEMO_DIR)/tiny-nope
	$(EDGELM) inspect $(DEMO_DIR)/tiny-nope

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build
