"""benchmarks/fidelity.py's Hugging Face folder for onnxruntime-genai's model builder computes what the
edgelm checkpoint computes, checked with transformers' own LlamaForCausalLM / SmolLM3ForCausalLM (the
builder itself is not needed: it reads the folder through the same transformers classes)."""

import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from edgelm.models import open_checkpoint
from edgelm.models.presets import write_preset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.fidelity import NotMade, hf_llama_folder  # noqa: E402

TOL = 1e-4
SEQ = 24


@pytest.mark.parametrize("preset,architecture", [("tiny-rope", "LlamaForCausalLM"), ("tiny-nope", "SmolLM3ForCausalLM")])
def test_builder_folder_computes_the_reference(tmp_path, preset, architecture):
    model_dir = write_preset(preset, tmp_path / preset, seed=2)
    weights = load_file(model_dir / "model.safetensors")
    temperatures = [name for name in weights if name.endswith("scale_param")]
    assert bool(temperatures) == (preset == "tiny-nope")
    torch.manual_seed(0)
    for name in temperatures:  # λ far from 1, so a fold left out (or applied per wrong head) shows
        weights[name] = 0.5 + torch.rand_like(weights[name])
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})

    folder = hf_llama_folder(model_dir, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    assert type(hf).__name__ == architecture
    ids = torch.randint(0, hf.config.vocab_size, (1, SEQ))
    with torch.no_grad():
        ours = open_checkpoint(model_dir).load_model()(ids)[0]
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max().item() <= TOL


def test_builder_folder_refuses_other_architectures(tmp_path):
    with pytest.raises(NotMade, match="NGen4ForCausalLM"):
        hf_llama_folder(write_preset("tiny-ngen4", tmp_path / "ngen4"), tmp_path / "hf")
