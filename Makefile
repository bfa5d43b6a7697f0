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
	$(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python compiles llama.cpp here (5-7 min on 2 cores, once: pip caches the wheel)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PY) -m pip install -q -e '.[test]'
	touch $@

MODEL := examples/models/tiny-nope
PROMPT := It is a truth universally acknowledged

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(EDGELM) inspect $(MODEL)
	$(EDGELM) generate $(MODEL) --prompt "$(PROMPT)" --max-new-tokens 40
	$(EDGELM) export $(MODEL) --format gguf --quant int4 --out $(DEMO_DIR)/tiny-nope-q4_k_m.gguf
	$(EDGELM) parity $(DEMO_DIR)/tiny-nope-q4_k_m.gguf --reference $(MODEL)
	$(EDGELM) generate $(DEMO_DIR)/tiny-nope-q4_k_m.gguf --prompt "$(PROMPT)" --max-new-tokens 40
	$(EDGELM) export $(MODEL) --format onnx --quant int4 --out $(DEMO_DIR)/tiny-nope-int4-onnx
	$(EDGELM) parity $(DEMO_DIR)/tiny-nope-int4-onnx --reference $(MODEL)
	$(EDGELM) generate $(DEMO_DIR)/tiny-nope-int4-onnx --prompt "$(PROMPT)" --max-new-tokens 40

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build
