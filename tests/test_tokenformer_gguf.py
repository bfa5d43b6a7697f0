"""TokenFormer's GGUF layout (gguf_layout/tokenformer.py), declared once for the writer and edgelm's ggml
executor: it maps every checkpoint tensor exactly once, the file holds the stacks it declares (checked
against the checkpoint with gguf-py's reader, not the executor), the executor fuses a block's q, k and v
Pattentions on them, and a file of another layout version is refused in one line."""

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFValueType

from edgelm.export.gguf import export_gguf
from edgelm.formats import LoadOptions, open_artifact
from edgelm.gguf_layout import expand_names
from edgelm.gguf_layout import tokenformer as layout
from edgelm.models import open_checkpoint

from .gguf_edit import rewrite_gguf
from .test_bad_input import assert_user_error


@pytest.fixture(scope="module")
def exported(preset_dir, tmp_path_factory):
    checkpoint = open_checkpoint(preset_dir("tiny-tokenformer"))
    return checkpoint, export_gguf(checkpoint, tmp_path_factory.mktemp("tf") / "m.gguf", "f32", certificate=False).path


def test_the_layout_maps_every_checkpoint_tensor_once(preset_dir):
    checkpoint = open_checkpoint(preset_dir("tiny-tokenformer"))
    declared = [source for tensor in layout.TENSORS for source in expand_names({s: tensor.name for s in tensor.sources},
                                                                                 checkpoint.spec.num_layers)]
    assert sorted(declared) == sorted(checkpoint.weight_names())


def test_the_file_holds_q_k_v_stacked_as_declared(exported):
    checkpoint, path = exported
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    read = lambda name: torch.from_numpy(np.array(tensors[name].data))  # numpy order: outermost first
    source = lambda name: checkpoint.tensors.get(name).float()
    for bid in range(checkpoint.spec.num_layers):
        parts = [f"sequential.{bid + 2}.attention.{p}" for p in ("query", "key", "value")]
        assert torch.equal(read(f"blk.{bid}.attn_qkv.key_tokens"), torch.stack([source(f"{p}.key_param_tokens") for p in parts]))
        assert torch.equal(read(f"blk.{bid}.attn_qkv.value_tokens"), torch.stack([source(f"{p}.value_param_tokens").t() for p in parts]))
        assert torch.equal(read(f"blk.{bid}.ffn.value_tokens"), source(f"sequential.{bid + 2}.mlp.value_param_tokens").t())
    assert tensors["blk.0.attn_qkv.key_tokens"].shape.tolist() == [256, 256, 3]  # ggml order: [d, slots, q·k·v]
    assert GGUFReader(str(path)).fields["tokenformer.layout_version"].contents() == layout.LAYOUT_VERSION


def test_a_decode_step_runs_one_key_and_one_value_product_for_q_k_v(exported):
    """Per block: q·k·v keys, q·k·v values (batched), output keys and values, FFN keys and values; plus
    the LM head: 6·L + 1 matrix products (layout 1 ran 10·L + 1), one rotary over q and k per block."""
    from edgelm.ggml_python import ggml

    checkpoint, path = exported
    backend = open_artifact(path, LoadOptions(context_length=64, threads=1)).backend
    backend.prefill([1, 2, 3])
    backend.decode(4)
    graph = next(iter(backend.decode_graphs.values())).graph
    ops = [ggml.ggml_op_name(ggml.ggml_graph_node(graph, i).contents.op).decode() for i in range(ggml.ggml_graph_n_nodes(graph))]
    layers = checkpoint.spec.num_layers
    assert ops.count("MUL_MAT") == 6 * layers + 1
    assert ops.count("ROPE") == layers and ops.count("RMS_NORM") == 3 * layers and "L2_NORM" not in ops and "SCALE" not in ops
    backend.close()


@pytest.mark.parametrize("version", [None, 1, 3])
def test_another_layout_version_is_one_line(exported, run_cli, tmp_path, version):
    _, path = exported
    key = f"{layout.ARCH}.{layout.VERSION.name}"
    other = rewrite_gguf(path, tmp_path / "other.gguf", drop_keys={key},
                         add={} if version is None else {key: (version, GGUFValueType.UINT32)})
    wanted = "the layout before q, k and v were stacked" if version is None else f"layout {version}"
    assert_user_error(run_cli("generate", other, "--prompt", "x"), wanted, f"runs layout {layout.LAYOUT_VERSION}",
                      "export the model again")


def test_a_long_prompt_runs_in_pieces_with_the_logits_of_one_graph(exported, monkeypatch):
    """Stranger 27: a GGUF declaring 2^18 FFN slots asked ggml for the compute buffer of a 3,080-token prompt at once (a
    MemoryError traceback). Prompts run in pieces of UBATCH tokens, as llama.cpp's n_ubatch: the logits of a prompt in
    pieces of 7 equal those of one graph (all 40 rows, and a prefill's last), and the cache continues alike."""
    from edgelm.runtime import ggml_executor

    ids = [int(i) for i in np.random.default_rng(0).integers(5, 200, 40)]
    results = {}
    for ubatch in (512, 7):
        monkeypatch.setattr(ggml_executor, "UBATCH", ubatch)
        with open_artifact(exported[1], LoadOptions(context_length=128, threads=1)) as artifact:
            rows = artifact.backend.forward(ids)
            last = artifact.backend.prefill(ids[:33])
            after = artifact.backend.decode(ids[33])
        results[ubatch] = rows, last, after
    for whole, pieces in zip(results[512], results[7]):
        assert np.abs(whole - pieces).max() <= 1e-3, np.abs(whole - pieces).max()
