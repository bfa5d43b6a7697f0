"""ggml-python (the `ggml` package: ggml's C API through ctypes, for the ggml executor, the GGUF parser and ggml's
quantizer), loaded only after llama-cpp-python's libraries. Every import of ggml in edgelm goes through here.

Both packages ship a ggml of their own (ggml-python 0.0.45 builds ggml 0.15.3; llama-cpp-python 0.3.36 ships 0.25.3)
under the same symbol names. ggml-python loads its libraries RTLD_GLOBAL, and ctypes binds every symbol when a library
loads (RTLD_NOW), so the package loaded first decides: with ggml-python first, libllama bound 293 functions and its CPU
backend 477 to ggml-python's older ggml (`LD_DEBUG=bindings`), and llama.cpp computed logits stock llama.cpp does not
(a GGUF with a Q3_K output layer: 0.0195 apart, which failed `verify` of a certificate made in a process where
llama-cpp-python had loaded first). With llama-cpp-python first, its libraries stay local to it and each package binds
to its own ggml."""

import logging
import sys

if "ggml" in sys.modules and "llama_cpp" not in sys.modules:  # a caller's script imported ggml-python before edgelm
    logging.getLogger("edgelm").warning(
        "ggml-python was imported before llama-cpp-python: llama.cpp in this process will run ggml-python's ggml, not its own "
        "(import edgelm or llama_cpp before ggml)")

import llama_cpp  # noqa: E402, F401  (first: see above)

import ggml  # noqa: E402

__all__ = ["ggml"]
