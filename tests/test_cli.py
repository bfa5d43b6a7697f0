"""The commands a user runs: init and inspect."""

import json

from edgelm.models.presets import PRESETS


def test_init_lists_presets(run_cli):
    code, out, _ = run_cli("init", "--list")
    assert code == 0
    for name in PRESETS:
        assert name in out


def test_init_then_inspect_reports_the_deciding_rule(run_cli, tmp_path):
    code, _, err = run_cli("init", "tiny-nope", tmp_path / "nope", "--seed", "3")
    assert code == 0, err
    code, out, err = run_cli("inspect", tmp_path / "nope", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["family"] == "llama" and info["position_encoding"] == "none"
    assert info["position_encoding_rule"] == "edgelm block in config.json"
    assert info["head_temperatures"]["all_one"] is True
    assert info["tokenizer"]["kind"].startswith("sentencepiece")
    assert info["parameters"] == 5114112
    code, out, _ = run_cli("inspect", tmp_path / "nope", "--position-encoding", "rope", "--json")
    assert json.loads(out)["position_encoding_rule"] == "--position-encoding option"
    config = json.loads((tmp_path / "nope" / "config.json").read_text())
    del config["edgelm"]  # as the NoPE paper's HeadScale models are published: only the tensors say it
    (tmp_path / "nope" / "config.json").write_text(json.dumps(config))
    code, out, _ = run_cli("inspect", tmp_path / "nope", "--json")
    info = json.loads(out)
    assert info["position_encoding"] == "none"
    assert info["position_encoding_rule"] == "HeadScale tensors (scale_param) in the checkpoint"


def test_inspect_table_names_every_field(run_cli, preset_dir):
    code, out, _ = run_cli("inspect", preset_dir("tiny-ngen4"))
    assert code == 0
    for field in ("family", "ngen4", "position_encoding_rule", "rotary_dims", "tokenizer"):
        assert field in out


def test_init_leaves_no_partial_folder_on_failure(run_cli, tmp_path, monkeypatch):
    import edgelm.models.presets as presets

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(presets, "copy_tokenizer", broken)
    code, _, err = run_cli("init", "tiny-rope", tmp_path / "out")
    assert code == 130
    assert list(tmp_path.iterdir()) == []


def test_every_tiny_preset_loads_as_it_was_built(preset_dir):
    """What a preset trains and writes is what loading it gives (position encoding included)."""
    from edgelm.models import open_checkpoint

    for name in ("tiny-nope", "tiny-rope", "tiny-ngen4", "tiny-tokenformer"):
        _, spec, _ = PRESETS[name].build()
        assert open_checkpoint(preset_dir(name)).spec == spec, name
