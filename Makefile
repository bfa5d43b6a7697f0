# Two entry points for a fresh clone: `make demo` and `make test`. Each creates .venv when needed.
# torch is installed first as the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EDGELM := $(VENV)/bin/edgelm
DEMO_DIR := build/demo

.PHONY: demo test clean web-runtime chromium memcheck test-web-real-size

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

# valgrind over edgelm's ggml executor (issue 29), not part of `make test`: one backend over prompts of
# changing length, every heap access checked (--undef-value-errors=no: invalid reads, writes and frees only;
# CPython's own uninitialised-value reports are noise; tests/valgrind.supp: glibc's). ggml-python's wheel is built with -march=native,
# whose AVX-512 valgrind cannot decode, so the same ggml (the vendored copy in ggml-python's sdist) is built
# once more with AVX2 and debug lines, and ggml-python's bindings are copied beside it under build/memcheck.
MEMCHECK := build/memcheck
$(MEMCHECK)/ggml/lib/libggml-cpu.so: $(VENV)/.installed
	@command -v valgrind > /dev/null || { echo "make memcheck needs valgrind: apt-get install valgrind"; exit 2; }
	rm -rf $(MEMCHECK) && mkdir -p $(MEMCHECK)/src
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(MEMCHECK)/src \
		"ggml-python==$$($(PY) -c 'import importlib.metadata as m; print(m.version("ggml-python"))')"
	tar xzf $(MEMCHECK)/src/ggml_python-*.tar.gz -C $(MEMCHECK)/src
	cmake -S $(MEMCHECK)/src/ggml_python-*/vendor/ggml -B $(MEMCHECK)/build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_SHARED_LIBS=ON \
		-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON > /dev/null
	cmake --build $(MEMCHECK)/build -j $$(nproc) > /dev/null
	cp -r $$($(PY) -c 'import importlib.util as u; print(u.find_spec("ggml").submodule_search_locations[0])') $(MEMCHECK)/ggml
	cp -L $(MEMCHECK)/build/src/libggml*.so $(MEMCHECK)/ggml/lib/

memcheck: $(MEMCHECK)/ggml/lib/libggml-cpu.so
	$(EDGELM) --quiet export examples/models/tiny-tokenformer --format gguf --quant int4 --out $(MEMCHECK)/tf.gguf
	PYTHONPATH=$(CURDIR)/$(MEMCHECK):$(CURDIR) PYTHONMALLOC=malloc valgrind -q --error-exitcode=99 --undef-value-errors=no \
		--suppressions=tests/valgrind.supp $(PY) tests/ggml_prompt_sequence.py $(MEMCHECK)/tf.gguf $(MEMCHECK)/logits.npz 512 4 4 40 2 300
	@echo "memcheck: valgrind found no invalid read, write or free over prompts of 4, 40, 2 and 300 tokens"

test: $(VENV)/.installed $(CONVERTER)/convert_hf_to_gguf.py $(LLAMA_SERVER) $(WEB_RUNTIME) chromium
	$(PY) -m pytest -q

# the 1.1B-shaped int4 web bundle in headless Chromium, against edgelm's tokens (~10 min on 2 cores; not in `test`)
test-web-real-size: $(VENV)/.installed $(WEB_RUNTIME) chromium
	EDGELM_WEB_REAL_SIZE=1 $(PY) -m pytest -q -s tests/test_web.py -k real_size

clean:
	rm -rf $(VENV) build
