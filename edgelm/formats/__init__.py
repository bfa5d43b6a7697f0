"""Everything a user can point edgelm at, one registered class per kind (formats/base.py says what each
declares). Registration order is detection order: a bundle before the ONNX folder it may be, and a
model folder last, for any folder no other format claims."""

from . import bundle, onnx, gguf, model_folder  # noqa: F401  (registration by import, in detection order)
from .base import FORMATS, Artifact, Format, LoadOptions, detect, open_artifact
from .bundle import bundled_format

__all__ = ["FORMATS", "Artifact", "Format", "LoadOptions", "bundled_format", "detect", "open_artifact"]
