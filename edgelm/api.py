"""The Python API, mirroring the CLI: `edgelm.load(path).generate(prompt)`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from .formats import Artifact, LoadOptions, open_artifact
from .runtime.generate import Piece, generate as run
from .runtime.sampling import SamplingOptions


class Model:
    """A model folder, .gguf file or ONNX folder, ready to generate."""

    def __init__(self, artifact: Artifact, options: LoadOptions | None = None):
        self.artifact = artifact
        self.tokenizer = artifact.tokenizer
        self.options = options or LoadOptions()

    def stream(self, prompt: str, max_new_tokens: int = 64, truncate: bool = False, **sampling) -> Iterator[Piece]:
        """Pieces of text as they are produced (see SamplingOptions for temperature, top_k, top_p, seed);
        `truncate` keeps the end of a prompt longer than the context."""
        return run(self.artifact.backend, self.tokenizer, prompt, max_new_tokens, SamplingOptions(**sampling), truncate=truncate)

    def generate(self, prompt: str, max_new_tokens: int = 64, truncate: bool = False, **sampling) -> str:
        return "".join(piece.text for piece in self.stream(prompt, max_new_tokens, truncate, **sampling))

    def perplexity(self, text: str, ctx: int = 256, stride: int | None = None) -> float:
        """Sliding-window perplexity, as `edgelm perplexity`. A backend that keeps only the last position's
        logits (llama.cpp opened for generation) scores on a second opening of the file with every
        position's logits and a `ctx`-token context, as the command opens it, closed afterwards."""
        from .evaluate import perplexity

        ids = self.tokenizer.encode(text)
        if self.artifact.backend.all_logits:
            return perplexity(self.artifact.backend, ids, ctx, stride).perplexity
        with open_artifact(self.artifact.path, replace(self.options, all_logits=True, context_length=ctx)) as scorer:
            return perplexity(scorer.backend, ids, ctx, stride).perplexity


def load(path: str | Path, **options) -> Model:
    """Open a model folder, .gguf file or ONNX folder; options as LoadOptions (device, threads, provider, …)."""
    options = LoadOptions(**options)
    return Model(open_artifact(path, options), options)
