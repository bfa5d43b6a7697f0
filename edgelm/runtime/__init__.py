"""One generation API over the torch reference, onnxruntime, llama-cpp-python and a native GGUF executor."""
