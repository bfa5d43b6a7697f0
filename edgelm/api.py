"""The Python API, mirroring the CLI: `edgelm.load(path).generate(prompt)`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .formats import Artifact, LoadOptions, open_artifact
from .runtime.generate import Piece, generate as run
from .runtime.sampling import SamplingOptions


class Model:
    """A model folder, .gguf file or ONNX folder, ready to generate."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.tokenizer = artifact.tokenizer

    def stream(self, prompt: str, max_new_tokens: int = 64, truncate: bool = False, **sampling) -> Iterator[Piece]:
        """Pieces of text as they are produced (see SamplingOptions for temperature, top_k, top_p, seed);
        `truncate` keeps the end of a prompt longer than the context."""
        return run(self.artifact.backend, self.tokenizer, prompt, max_new_tokens, SamplingOptions(**sampling), truncate=truncate)

    def generate(self, prompt: str, max_new_tokens: int = 64, truncate: bool = False, **sampling) -> str:
        return "".join(piece.text for piece in self.stream(prompt, max_new_tokens, truncate, **sampling))

    def perplexity(self, text: str, ctx: int = 256, stride: int | None = None) -> float:
        from .evaluate import perplexity

        return perplexity(self.artifact.backend, self.tokenizer.encode(text), ctx, stride).perplexity


def load(path: str | Path, **options) -> Model:
    """Open a model folder, .gguf file or ONNX folder; options as LoadOptions (device, threads, provider, …)."""
    return Model(open_artifact(path, LoadOptions(**options)))
