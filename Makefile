# Two entry points for a fresh clone: `make demo` and `make test`. Each creates .venv when needed.
# torch is installed first as the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EDGELM := $(VENV)/bin/edgelm
DEMO_DIR := build/demo

.PHONY: demo test clean web-runtime chromium

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

# llama.cpp's llama-server, for the chat template under `--jinja` (llama-cpp-python ships no server, and its
# libllama has no jinja engine): built from the same sdist's vendored llama.cpp, target llama-server only,
# once per llama-cpp-python version, into a cache outside the clone (~10 min on 2 cores the first time)
LLAMA_SERVER := build/llama-server
SERVER_CACHE := $${XDG_CACHE_HOME:-$$HOME/.cache}/edgelm
$(LLAMA_SERVER): $(VENV)/.installed
	version=$$($(PY) -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))'); \
	cached=$(SERVER_CACHE)/llama-server-$$version; \
	if [ ! -x $$cached ]; then \
		rm -rf build/server-src && mkdir -p build/server-src $(SERVER_CACHE) && \
		$(PY) -m pip download -q --no-deps --no-binary :all: -d build/server-src "llama-cpp-python==$$version" && \
		tar xzf build/server-src/llama_cpp_python-*.tar.gz -C build/server-src && \
		cmake -S build/server-src/llama_cpp_python-*/vendor/llama.cpp -B build/server-src/build -DCMAKE_BUILD_TYPE=Release \
			-DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF > /dev/null && \
		cmake --build build/server-src/build --target llama-server -j $$(nproc) > /dev/null && \
		cp build/server-src/build/bin/llama-server $$cached.tmp && mv $$cached.tmp $$cached && rm -rf build/server-src; \
	fi; \
	ln -sf $$cached $@

# the web bundle's runtime, onnxruntime-web and tokenizers.js, pinned by web/package-lock.json (npm registry)
WEB_RUNTIME := web/node_modules/.package-lock.json
$(WEB_RUNTIME): web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --ignore-scripts
	touch $@

web-runtime: $(WEB_RUNTIME)

# Debian's Chromium for the browser test (tests/test_web.py), installed when make runs as root, as CI does;
# elsewhere the test reports that it skipped and why
chromium:
	@command -v chromium > /dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; } || \
		echo "note: no chromium, and not root to install it: tests/test_web.py will skip"

test: $(VENV)/.installed $(CONVERTER)/convert_hf_to_gguf.py $(LLAMA_SERVER) $(WEB_RUNTIME) chromium
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build
