"""GPT-2 against independent references only: a tiny random folder built by transformers' own `GPT2Config`
and `save_pretrained` (Conv1D weights, learned `wpe`, tied lm_head left out of the file), with a
byte-level BPE trained by the `tokenizers` library in GPT-2's layout (vocab.json, merges.txt,
tokenizer.json); run by transformers' own `GPT2LMHeadModel`; the GGUF against what llama.cpp's
`convert_hf_to_gguf.py` writes for the same folder, run in stock llama.cpp; the ONNX in onnxruntime
and onnxruntime-genai.

The converter recognises GPT-2's pre-tokenizer only by the hash of the published 50,257-token
vocabulary's output (get_vocab_base_pre), so it is run here with that one function answering "gpt-2",
the name edgelm finds from the tokenizer.json's structure.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from gguf import GGUFReader

from edgelm.errors import UserError
from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.formats import open_artifact
from edgelm.models import open_checkpoint

from .genai import genai_greedy

CONVERTER_DIR = Path(__file__).resolve().parent.parent / "build" / "llama.cpp-converter"
TEXTS = Path(__file__).resolve().parent.parent / "examples" / "data"
POSITIONS = 128
TOL = 1e-4  # fp32 logits, edgelm's torch module vs transformers
TOL_GGUF = 1e-4  # f32 GGUF in llama.cpp vs transformers (its fp16 GELU table: measured 2.2e-5 at this size)
PROMPT, NEW = [0, 60, 300, 45, 200, 17, 99, 400], 24
CONVERT = """import runpy, sys
sys.path[:0] = [{d!r}, {d!r} + "/gguf-py"]
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = [{d!r} + "/convert_hf_to_gguf.py", *sys.argv[1:]]
runpy.run_path({d!r} + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def write_gpt2_folder(folder: Path, legacy_buffers: torch.dtype | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train([str(TEXTS / "emma.txt")], trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                          unk_token="<|endoftext|>")
    fast.save_pretrained(folder)
    config = transformers.GPT2Config(vocab_size=len(fast), n_positions=POSITIONS, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id)
    config.n_ctx = POSITIONS  # published GPT-2 configs carry it; the converter reads it for the context length
    config._attn_implementation = "eager"
    torch.manual_seed(5)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # norms and biases off their init values, positions large enough to matter
        for name, param in model.named_parameters():
            if ".ln_" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
            elif name.endswith("wpe.weight"):
                param.mul_(10)
    model.save_pretrained(folder)
    if legacy_buffers:  # transformers before 4.32 saved the causal mask buffers with the weights (uint8 in 4.2x, then bool)
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        for i in range(config.n_layer):
            tensors[f"transformer.h.{i}.attn.bias"] = torch.ones(POSITIONS, POSITIONS).tril().view(1, 1, POSITIONS, POSITIONS).to(legacy_buffers)
            tensors[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return model


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2") / "model"
    return folder, write_gpt2_folder(folder)


def ids_for(n=100):
    return torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(7))


def reference_greedy(hf):
    with torch.no_grad():
        out = hf.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long), max_new_tokens=NEW,
                          min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


@pytest.mark.parametrize("legacy", [None, torch.float32, torch.uint8, torch.bool])  # round 12b: uint8 was refused
def test_torch_logits_equal_transformers(tmp_path, legacy):
    hf = write_gpt2_folder(tmp_path / "model", legacy)
    checkpoint = open_checkpoint(tmp_path / "model")
    assert checkpoint.spec.tie_embeddings and "lm_head.weight" not in checkpoint.tensors.shapes
    ids = ids_for()
    with torch.no_grad():
        delta = (checkpoint.load_model()(ids)[0] - hf(ids).logits).abs().max().item()
    print(f"\ngpt2 (legacy buffers {legacy}): torch vs transformers max |Δlogit| {delta:.3g}")
    assert delta <= TOL


@pytest.fixture(scope="module")
def converted(published, tmp_path_factory):
    if not (CONVERTER_DIR / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"{CONVERTER_DIR} is missing: `make test` fetches it")
    made = {}

    def get(outtype):
        if outtype not in made:
            folder, _ = published
            root = tmp_path_factory.mktemp(f"gpt2-{outtype}")
            theirs = root / "converter.gguf"
            subprocess.run([sys.executable, "-c", CONVERT.format(d=str(CONVERTER_DIR)), str(folder), "--outfile", str(theirs),
                            "--outtype", outtype], check=True, capture_output=True, text=True)
            made[outtype] = export_gguf(open_checkpoint(folder), root / "edgelm.gguf", outtype).path, theirs
        return made[outtype]

    return get


@pytest.mark.parametrize("outtype", ["f16", "f32"])
def test_gguf_equals_the_converters(converted, outtype):
    ours, theirs = (GGUFReader(str(p)) for p in converted(outtype))
    mine, their = ({t.name: t for t in r.tensors} for r in (ours, theirs))
    assert sorted(mine) == sorted(their)
    assert "output.weight" not in mine and "position_embd.weight" in mine  # tied: llama.cpp reads token_embd
    for name, tensor in their.items():
        assert (list(mine[name].shape), mine[name].tensor_type) == (list(tensor.shape), tensor.tensor_type), name
        assert np.array(mine[name].data).tobytes() == np.array(tensor.data).tobytes(), name
    assert ours.fields["general.architecture"].contents() == theirs.fields["general.architecture"].contents() == "gpt2"
    for key, field in theirs.fields.items():
        if key.startswith(("gpt2.", "tokenizer.ggml.")):
            assert ours.fields[key].contents() == pytest.approx(field.contents()) if key.startswith("gpt2.") \
                else ours.fields[key].contents() == field.contents(), key


def test_gguf_runs_in_llama_cpp_as_transformers(published, converted):
    from llama_cpp import Llama

    _, hf = published
    llm = Llama(model_path=str(converted("f32")[0]), n_ctx=POSITIONS, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)
    ids = ids_for()
    llm.eval(ids[0].tolist())
    with torch.no_grad():
        delta = float(np.abs(np.array(llm.scores[: ids.shape[1]]) - hf(ids).logits[0].numpy()).max())
    print(f"\ngpt2: f32 GGUF in llama.cpp vs transformers max |Δlogit| {delta:.3g}")
    assert delta <= TOL_GGUF
    llm.reset()
    llm.eval(PROMPT)
    tokens = []
    for _ in range(NEW):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([tokens[-1]])
    assert tokens == reference_greedy(hf)


def test_onnx_greedy_equals_transformers(published, tmp_path):
    folder, hf = published
    onnx = export_onnx(open_checkpoint(folder), tmp_path / "onnx", "f32").path
    expected = reference_greedy(hf)
    backend = open_artifact(onnx).backend
    logits, tokens = backend.prefill(PROMPT), []
    for _ in range(NEW):
        tokens.append(int(np.argmax(logits)))
        logits = backend.decode(tokens[-1])
    assert tokens == expected  # onnxruntime
    assert genai_greedy(onnx, PROMPT, NEW, exact_length=True) == expected
    assert json.loads((onnx / "config.json").read_text())["model_type"] == "gpt2"
    from optimum.onnxruntime import ORTModelForCausalLM  # warns that its gpt2 wants position_ids; runs without them

    out = ORTModelForCausalLM.from_pretrained(onnx).generate(torch.tensor([PROMPT]), max_new_tokens=NEW, min_new_tokens=NEW,
                                                             do_sample=False, pad_token_id=0)
    assert out[0, len(PROMPT):].tolist() == expected


def test_a_context_past_the_learned_positions_is_refused(published, converted, tmp_path):
    from edgelm.errors import UserError
    from edgelm.formats import LoadOptions

    folder, _ = published
    onnx = export_onnx(open_checkpoint(folder), tmp_path / "onnx", "f32").path
    for artifact in (folder, converted("f32")[0], converted("f32")[1], onnx):  # the converter's GGUF too
        with pytest.raises(UserError, match=f"past the {POSITIONS} positions this model has learned"):
            open_artifact(artifact, LoadOptions(context_length=POSITIONS + 1))
        assert open_artifact(artifact, LoadOptions(context_length=POSITIONS)).backend


def test_a_body_only_checkpoint_loads_as_openai_community_gpt2s(tmp_path):
    """openai-community/gpt2's model.safetensors holds `GPT2Model`'s tensors (wte.weight, h.0.attn.c_attn.weight,
    the float32 h.{i}.attn.bias masks, no transformer. prefix, no lm_head) under a config naming GPT2LMHeadModel:
    transformers and the converter read it; so does edgelm, with the same logits and the converter's tensors."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    hf = write_gpt2_folder(folder, legacy_buffers=torch.float32)
    tensors = load_file(folder / "model.safetensors")
    save_file({name.removeprefix("transformer."): t for name, t in tensors.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    assert not any(name.startswith("transformer.") for name in load_file(folder / "model.safetensors"))
    ids = ids_for()
    with torch.no_grad():
        reloaded = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
        assert torch.equal(reloaded(ids).logits, hf(ids).logits)  # the fixture is what transformers loads as this model
        delta = (open_checkpoint(folder).load_model()(ids)[0] - hf(ids).logits).abs().max().item()
    print(f"\ngpt2, body-only checkpoint: torch vs transformers max |Δlogit| {delta:.3g}")
    assert delta <= TOL
    # mixed: transformers takes the prefix for all or none and initialises the others at random; refused, saying so
    save_file({n if n == "transformer.ln_f.weight" else n.removeprefix("transformer."): t for n, t in tensors.items()},
              folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"27 tensors are named without the 'transformer' prefix the others carry: transformer\.wte"):
        open_checkpoint(folder)
    save_file({n.removeprefix("transformer."): t for n, t in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    if not (CONVERTER_DIR / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"{CONVERTER_DIR} is missing: `make test` fetches it")
    # the converter (this version) stops at the h.{i}.attn.bias masks ("Can not map tensor"): compared without them
    save_file({n: t for n, t in load_file(folder / "model.safetensors").items() if not n.endswith((".attn.bias", ".attn.masked_bias"))},
              folder / "model.safetensors", metadata={"format": "pt"})
    theirs = tmp_path / "converter.gguf"
    subprocess.run([sys.executable, "-c", CONVERT.format(d=str(CONVERTER_DIR)), str(folder), "--outfile", str(theirs),
                    "--outtype", "f32"], check=True, capture_output=True, text=True)
    ours = export_gguf(open_checkpoint(folder), tmp_path / "edgelm.gguf", "f32").path
    mine, their = ({t.name: np.array(t.data).tobytes() for t in GGUFReader(str(p)).tensors} for p in (ours, theirs))
    assert mine == their
