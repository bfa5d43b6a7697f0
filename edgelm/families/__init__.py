"""The families, one file each: the torch model (on edgelm/models' shared parts) and how each format
writes it (on the export layer's mapping bases, export/gguf_mapping.py and export/onnx_mapping.py),
registered by decorator. Importing this package imports every module in it, so a new family is a new
file here and nothing else; `models.registry.families()` imports it on first use.

It sits above both layers it draws on: models (torch reference) → export (mapping bases, writers) →
families; nothing in models or export imports a family by name.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
