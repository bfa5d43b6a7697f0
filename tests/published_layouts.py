"""Model folders laid out exactly as their authors publish them, at tiny size, written from the
published facts (file names, config keys, tensor names), never by edgelm's own writer.

- TokenFormer (Haiyang-W/TokenFormer-150M … -1-5B, trained with GPT-NeoX): `pytorch_model.bin`, a
  pickle of one flat fp32 state dict in the GPT-NeoX pipeline layout; a config.json with GPT-NeoX
  keys, no `model_type` and no `vocab_size`; GPT-NeoX-20B's byte-level BPE `tokenizer.json`, whose
  vocabulary is smaller than the embedding (GPT-NeoX pads the embedding rows to a multiple of 128),
  with `<|endoftext|>` at 0 and `<|padding|>` at 1, and no tokenizer_config.json.
- TinyLlama-NoPE-1.1B (AntNLP): a plain LlamaForCausalLM config.json and safetensors; nothing says
  the model has no position encoding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CORPUS = Path(__file__).resolve().parent.parent / "examples" / "data" / "persuasion.txt"
TOKENFORMER_SHAPE = dict(num_layers=2, hidden_size=256, num_attention_heads=4, qkv_slot_num=256,
                         proj_slot_num=256, ffn_slot_num=512)
TOKENFORMER_TOKENS = 420  # BPE vocabulary incl. the two special tokens
TOKENFORMER_ROWS = 512  # embedding rows: the vocabulary padded to a multiple of 128


def tokenformer_config(**overrides) -> dict:
    """The published config.json's keys (GPT-NeoX names), at tiny size."""
    return {
        "architectures": ["TokenFormerForCausalLM"],
        **TOKENFORMER_SHAPE,
        "max_position_embeddings": 2048,
        "rotary_pct": 0.25,
        "pos_emb": "rotary",
        "norm": "layernorm_nonparam",
        "final_norm": "layernorm",
        "norm_activation_type": "l2_norm_gelu",
        "no_weight_tying": False,
        "torch_dtype": "float16",
        **overrides,
    }


def neox_tokenizer(size: int = TOKENFORMER_TOKENS):
    """A byte-level BPE shaped like GPT-NeoX-20B's tokenizer.json (pre-tokenizer, decoder and the two
    special tokens as that file has them), trained on a shipped novel."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([CORPUS.read_text(encoding="utf-8")[:200_000]], trainer)
    return tokenizer


def tokenformer_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights under the published names: matrices N(0, 0.02) (std 0.1 for the tied
    embedding, so that logits have a spread of about 1.6), final norm near (1, 0)."""
    g = torch.Generator().manual_seed(seed)
    d, layers = config["hidden_size"], config["num_layers"]
    slots = {"query": config["qkv_slot_num"], "key": config["qkv_slot_num"], "value": config["qkv_slot_num"],
             "proj": config["proj_slot_num"]}
    tensors = {"sequential.0.word_embeddings.weight": 0.1 * torch.randn(TOKENFORMER_ROWS, d, generator=g)}
    for i in range(layers):
        for name, n in slots.items():
            for side in ("key", "value"):
                tensors[f"sequential.{i + 2}.attention.{name}.{side}_param_tokens"] = 0.02 * torch.randn(n, d, generator=g)
        for side in ("key", "value"):
            tensors[f"sequential.{i + 2}.mlp.{side}_param_tokens"] = 0.02 * torch.randn(config["ffn_slot_num"], d, generator=g)
    tensors[f"sequential.{layers + 3}.norm.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
    tensors[f"sequential.{layers + 3}.norm.bias"] = 0.02 * torch.randn(d, generator=g)
    return tensors


def write_tokenformer_neox(folder: Path, config: dict | None = None, seed: int = 0) -> Path:
    config = config or tokenformer_config()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(tokenformer_state_dict(config, seed), folder / "pytorch_model.bin")
    neox_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def strip_position_encoding_facts(source: Path, folder: Path) -> Path:
    """A copy of an edgelm llama folder as a plain published LlamaForCausalLM: the edgelm block and
    the HeadScale (`scale_param`) tensors removed, as AntNLP's base TinyLlama-NoPE-1.1B has neither."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("edgelm", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {n: t for n, t in load_file(folder / "model.safetensors").items() if not n.endswith(".scale_param")}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_hub_cache(hf_home: Path, repo_id: str, source: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """`source`'s files as huggingface_hub lays out a downloaded snapshot (file_download.py):
    hub/models--ORG--NAME/blobs/<hash> holds the bytes, snapshots/<commit>/<file> is a relative
    symlink to its blob, refs/main holds the commit."""
    import hashlib
    import os

    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", snapshot / file.name)
    return snapshot
