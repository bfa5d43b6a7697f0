"""A Hugging Face-style model folder (config.json + safetensors, or a pickle with --allow-pickle): the
torch reference."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from .base import Artifact, Format, LoadOptions, recorded_training_length, register


def _temperature_summary(table) -> dict[str, Any]:
    return {
        "min": round(table.min().item(), 6),
        "max": round(table.max().item(), 6),
        "mean": round(table.mean().item(), 6),
        "all_one": bool((table == 1).all()),
    }


@register
class ModelFolder(Format):
    kind = "model folder"
    noun = "a model folder"
    checkpoint = True
    honoured = frozenset({"f32_kv_cache", "device", "allow_pickle"})  # the fp32 torch reference's cache is float32 anyway
    option_fixes = {"gpu_layers": "drop --gpu-layers; --device cuda runs a model folder on a GPU",
                    "provider": "drop --provider; --device cuda runs a model folder on a GPU"}
    bundled = False

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir()  # detected last: any folder no other format claims

    def _checkpoint(self, options: LoadOptions):
        from ..models import open_checkpoint

        return open_checkpoint(self.path, position_encoding=options.position_encoding,
                               head_temperatures=options.head_temperatures, allow_pickle=options.allow_pickle)

    def open(self, options: LoadOptions) -> Artifact:
        from ..runtime.torch_backend import TorchBackend

        self.check_options(options)
        checkpoint = self._checkpoint(options)
        options.refuse_past_learned_positions(getattr(checkpoint.spec.positions, "max_positions", None), self.path)
        tokenizer = checkpoint.tokenizer()  # before minutes of loading weights
        device = options.resolved_device()
        backend = TorchBackend(checkpoint.load_model(device), options.threads)
        backend.context_length = options.context_for(backend.context_length)  # a limit only: torch's cache grows
        details = {"family": checkpoint.spec.family, "position_encoding": checkpoint.spec.position_encoding}
        return Artifact(self.path, self, f"torch ({device})", tokenizer, backend, details)

    def training_length(self) -> int | None:
        from ..models.checkpoint import read_config

        return recorded_training_length(read_config(self.path))

    def stated_sampling(self) -> dict[str, Any]:
        from ..models.checkpoint import recommended_sampling

        return recommended_sampling(self.path)

    def describe(self, options: LoadOptions) -> dict[str, Any]:
        self.check_options(options)
        checkpoint = self._checkpoint(options)
        spec = checkpoint.spec
        tokenizer = checkpoint.tokenizer()
        return {
            "format": self.kind,
            "family": spec.family,
            "parameters": checkpoint.parameter_count(),
            "vocab_size": spec.vocab_size,
            "hidden_size": spec.hidden_size,
            "layers": spec.num_layers,
            "heads": spec.num_heads,
            "kv_heads": spec.num_kv_heads,
            "head_dim": spec.head_dim,
            **asdict(spec.family_config),
            "max_positions": spec.max_positions,
            "tied_embeddings": spec.tie_embeddings,
            "position_encoding": spec.position_encoding,
            "position_encoding_rule": checkpoint.position_encoding_rule,
            "position_encoding_perplexities": checkpoint.position_encoding_perplexities,
            "rotary_dims": spec.rotated_dims,
            "rope_theta": getattr(spec.positions, "theta", None) if spec.rotated_dims else None,
            "rope_scaling": spec.positions.scaling_summary(),
            "head_temperatures": _temperature_summary(checkpoint.head_temperatures()),
            "head_temperature_source": checkpoint.temperature_source,
            "tokenizer": {
                "kind": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "bos_id": tokenizer.bos_id,
                "eos_id": tokenizer.eos_id,
                "add_bos": tokenizer.add_bos,
                "chat_template": tokenizer.chat_template is not None,
            },
        }

    def weight_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.suffix == ".safetensors")
