"""llama (RoPE and NoPE) against transformers.LlamaForCausalLM on the same random weights, fp32."""

import json

import pytest
import torch
import transformers
from transformers.models.llama import modeling_llama

from edgelm.errors import UserError
from edgelm.models import open_checkpoint

TOL = 1e-5
SEQ = 24  # positions compared per test


def hf_llama(folder, tie=False, shard=False):
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=tie, attn_implementation="eager",
    )
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms so a dropped norm weight shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder, max_shard_size="200KB" if shard else "5GB")
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def edgelm_logits(folder, ids, **options):
    model = open_checkpoint(folder, **options).load_model()
    with torch.no_grad():
        return model(ids)[0]


@pytest.mark.parametrize("tie,shard", [(False, False), (True, False), (False, True)])
def test_rope_equals_transformers(tmp_path, tie, shard):
    hf = hf_llama(tmp_path, tie=tie, shard=shard)
    assert (tmp_path / "model.safetensors.index.json").exists() == shard
    ids = torch.randint(0, 512, (2, SEQ))
    ours = edgelm_logits(tmp_path, ids, position_encoding="rope")  # random weights: nothing else can tell
    assert (ours - hf_logits(hf, ids)).abs().max().item() <= TOL


def test_nope_equals_transformers_with_identity_rotary(tmp_path, monkeypatch):
    hf = hf_llama(tmp_path)
    ids = torch.randint(0, 512, (1, SEQ))
    with_rope = hf_logits(hf, ids)
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", lambda q, k, *args, **kwargs: (q, k))
    without_rope = hf_logits(hf, ids)
    ours = edgelm_logits(tmp_path, ids, position_encoding="none")
    assert (ours - without_rope).abs().max().item() <= TOL
    assert (ours - with_rope).abs().max().item() > 1e-2  # the two references really differ


def test_temperatures_equal_per_head_scaled_queries(tmp_path):
    """softmax(λ_h·q·kᵀ/√d) equals the same model with q_proj rows of head h multiplied by λ_h."""
    hf = hf_llama(tmp_path)
    layers, heads, head_dim = 3, 8, 16
    table = 0.5 + torch.rand(layers, heads)
    (tmp_path / "temps.json").write_text(json.dumps({"layers": table.tolist()}))
    ids = torch.randint(0, 512, (1, SEQ))
    plain = hf_logits(hf, ids)
    with torch.no_grad():
        for layer, row in zip(hf.model.layers, table):
            layer.self_attn.q_proj.weight.mul_(row.repeat_interleave(head_dim)[:, None])
    scaled = hf_logits(hf, ids)
    ours = edgelm_logits(tmp_path, ids, head_temperatures=tmp_path / "temps.json", position_encoding="rope")
    assert (ours - scaled).abs().max().item() <= TOL
    assert (ours - plain).abs().max().item() > 1e-3  # well above TOL: the temperatures matter


def test_headscale_tensors_mark_nope_and_supply_temperatures(tmp_path):
    hf_llama(tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "model.safetensors")
    table = 1.0 + torch.rand(3, 8)
    for i in range(3):
        tensors[f"model.layers.{i}.self_attn.scale_param"] = table[i].clone()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    checkpoint = open_checkpoint(tmp_path)
    assert checkpoint.spec.position_encoding == "none"
    assert "HeadScale" in checkpoint.position_encoding_rule
    assert torch.equal(checkpoint.head_temperatures(), table)
    # an explicit file replaces the checkpoint's temperatures, it does not multiply them
    (tmp_path / "temps.json").write_text(json.dumps({"layers": torch.full((3, 8), 2.0).tolist()}))
    replaced = open_checkpoint(tmp_path, head_temperatures=tmp_path / "temps.json").load_model()
    assert torch.equal(replaced.head_temperatures(), torch.full((3, 8), 2.0))


def test_position_encoding_rules_in_order(tmp_path):
    hf_llama(tmp_path)
    with pytest.raises(UserError, match="--position-encoding"):  # a plain llama config declares nothing
        open_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["edgelm"] = {"position_encoding": "none"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    block = open_checkpoint(tmp_path)
    assert (block.spec.position_encoding, block.position_encoding_rule) == ("none", "edgelm block in config.json")
    option = open_checkpoint(tmp_path, position_encoding="rope")
    assert (option.spec.position_encoding, option.position_encoding_rule) == ("rope", "--position-encoding option")


def test_a_folder_declaring_no_position_encoding_runs_where_the_error_says(run_cli, tmp_path):
    """A stranger's finding: for a published Llama folder that declares no position encoding (random weights:
    measuring cannot decide), parity, verify --reference, chat and bench said 'pass --position-encoding', an
    option they did not take. parity and verify --reference now run the reference with the encoding the artifact
    records (and its λ); chat and bench take the option."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    models = Path(__file__).resolve().parents[1] / "examples" / "models"
    config = transformers.LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(5)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (models / "tiny-rope" / name).is_file():
            shutil.copy(models / "tiny-rope" / name, tmp_path / "hf" / name)
    code, _, err = run_cli("export", tmp_path / "hf", "--quant", "f32", "--out", tmp_path / "m.gguf")
    assert code == 2 and "--position-encoding" in err, err  # the export takes the option the line names
    code, _, err = run_cli("export", tmp_path / "hf", "--quant", "f32", "--position-encoding", "rope", "--out", tmp_path / "m.gguf")
    assert code == 0, err
    code, _, err = run_cli("parity", tmp_path / "m.gguf", "--reference", tmp_path / "hf", "--tokens", 16, "--f32-kv-cache", "--device", "cpu")
    assert code == 0, err
    code, out, err = run_cli("verify", tmp_path / "m.gguf", "--reference", tmp_path / "hf")
    assert code == 0 and "every field within tolerance" in out, (out, err)
    code, _, err = run_cli("bench", tmp_path / "hf", "--position-encoding", "rope", "--prompt-tokens", 8, "--new-tokens", 2)
    assert code == 0, err
    done = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(tmp_path / "hf"), "--position-encoding", "rope",
                           "--max-new-tokens", "2"], input=b"Hello\n", capture_output=True, timeout=300)
    assert done.returncode == 0 and b"prompt tokens evaluated" in done.stderr, done.stderr.decode()


@pytest.mark.parametrize("parameters, refused", [
    ({"rope_type": "default", "rope_theta": 10.0}, "rope_theta, rope_type"),  # a stranger's: ran θ 10 with llama3 scaling
    ({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, "factor"),
    ({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, None),  # the same facts twice, as a converted config may carry them
])
def test_rope_parameters_beside_rope_scaling_must_agree(tmp_path, parameters, refused):
    hf_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                  rope_parameters=parameters)
    (tmp_path / "config.json").write_text(json.dumps(config))
    if refused:
        with pytest.raises(UserError, match=f"disagree on {refused}"):
            open_checkpoint(tmp_path, position_encoding="rope")
    else:
        assert open_checkpoint(tmp_path, position_encoding="rope").spec.positions.scaling.factor == 32.0
