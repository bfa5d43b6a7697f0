"""One generation API over the torch reference, onnxruntime, llama-cpp-python and edgelm's ggml executor (GGUF archs llama.cpp lacks)."""
