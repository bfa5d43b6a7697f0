"""edgelm: take small causal language models from a training checkpoint to a phone or a laptop CPU."""

__version__ = "0.1.0"
