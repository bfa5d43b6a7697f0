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

# llama.cpp's own converter (tests open what it writes): from the source distribution of the installed
# llama-cpp-python, which vendors llama.cpp; pip caches the download
CONVERTER := build/llama.cpp-converter
$(CONVERTER)/convert_hf_to_gguf.py: $(VENV)/.installed
	rm -rf $(CONVERTER) build/sdist && mkdir -p build/sdist
	$(PY) -m pip download -q --no-deps --no-binary :all: -d build/sdist \
		"llama-cpp-python==$$($(PY) -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
	tar xzf build/sdist/llama_cpp_python-*.tar.gz -C build/sdist --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
		'*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
	mv build/sdist/llama_cpp_python-*/vendor/llama.cpp $(CONVERTER)
	rm -rf build/sdist

test: $(VENV)/.installed $(CONVERTER)/convert_hf_to_gguf.py
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build
