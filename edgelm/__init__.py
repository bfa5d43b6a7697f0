"""edgelm: take small causal language models from a training checkpoint to a phone or a laptop CPU.

    import edgelm
    model = edgelm.load("examples/models/tiny-rope")   # or a .gguf file, or an ONNX folder
    print(model.generate("It is a truth universally acknowledged", max_new_tokens=20))
"""

__version__ = "0.1.0"


def load(path, **options):
    """Open a model folder, .gguf file or ONNX folder for generation (see edgelm.api)."""
    from .api import load as _load

    return _load(path, **options)
