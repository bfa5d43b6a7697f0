"""edgelm: take small causal language models from a training checkpoint to a phone or a laptop CPU.

    import edgelm
    model = edgelm.load("examples/models/tiny-rope")   # or a .gguf file, or an ONNX folder
    print(model.generate("It is a truth universally acknowledged", max_new_tokens=20))
"""

import os as _os

from .errors import UserError

__version__ = "0.1.0"
__all__ = ["load", "UserError", "__version__"]

# onnxruntime (1.32) and onnxruntime-genai record usage events (a device id, the OS and CPU, error messages) in
# ~/.cache/Microsoft/DeveloperTools for upload, unless this is set before they load: edgelm works offline and
# writes only what the user names. A value the user set is kept.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def load(path, **options):
    """Open a model folder, .gguf file or ONNX folder for generation (see edgelm.api). What is wrong with what
    you give (a path, a file, an option) raises edgelm.UserError, one line saying what, where and what to do."""
    from .api import load as _load

    return _load(path, **options)
