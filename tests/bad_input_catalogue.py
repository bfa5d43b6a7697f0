"""The catalogue of user mistakes and hostile files: one row per case, each a command line, what breaks
the input first, and the text its one error line must hold. A new case is one row.

Placeholders in a row's command line name private copies, made on first use for that case only:
{model} tiny-rope's folder, {nope} tiny-nope's, {tokenformer} tiny-tokenformer's, {gguf} a native TokenFormer GGUF (edgelm parses all of its
metadata), {onnx} tiny-rope's ONNX folder, {bundle} a bundle of that ONNX folder, {zip} the same zipped,
{tmp} the case's empty scratch folder (and {text} a short text file in it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGUFValueType

NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    line: str  # a piece of the one error line
    damage: Callable | None = None  # damage(workspace) breaks the copies before the command runs


def case(name, argv, line, damage=None) -> Case:
    return Case(name, tuple(argv.split()), line, damage)


# what breaks an input: each returns damage(workspace)
def edit_json(target: str, name: str, change) -> Callable:
    """`change`: a dict merged into the document, or a function of the document returning the new one."""
    def damage(ws):
        path = Path(ws[target]) / name
        document = json.loads(path.read_text())
        path.write_text(json.dumps(change(document) if callable(change) else {**document, **change}))
    return damage


def config(**changes) -> Callable:
    return edit_json("model", "config.json", changes)


def without_key(target: str, name: str, *path: str) -> Callable:
    def change(document):
        node = document
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return document
    return edit_json(target, name, change)


def sparse(target: str, name: str, size: int) -> Callable:
    """A file of `size` bytes that takes no disk blocks."""
    def damage(ws):
        with open(Path(ws[target]) / name, "wb") as handle:
            handle.truncate(size)
    return damage


def write(target: str, name: str, content: str | bytes) -> Callable:
    def damage(ws):
        path = Path(ws[target]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def remove(target: str, name: str) -> Callable:
    return lambda ws: (Path(ws[target]) / name).unlink()


def truncate(target: str, name: str = "") -> Callable:
    def damage(ws):
        path = Path(ws[target]) / name if name else Path(ws[target])
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return damage


def tensors(change) -> Callable:
    def damage(ws):
        from safetensors.torch import load_file, save_file

        path = Path(ws["model"]) / "model.safetensors"
        loaded = load_file(path)
        change(loaded)
        save_file(loaded, path)
    return damage


def set_tensor(name: str, value) -> Callable:
    def change(loaded):
        import torch

        loaded[name] = value(loaded[name]) if callable(value) else torch.full_like(loaded[name], value)
    return tensors(change)


def gguf(add=None, drop_keys=(), drop_tensors=(), arch=None, replace_tensors=None, key="gguf") -> Callable:
    def damage(ws):
        from .gguf_edit import rewrite_gguf

        path = Path(ws[key])
        rewrite_gguf(path, path.with_suffix(".new"), add=add, drop_keys=set(drop_keys), drop_tensors=set(drop_tensors), arch=arch,
                     replace_tensors=replace_tensors)
        path.with_suffix(".new").replace(path)
    return damage


def gguf_key(key: str, value, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> Callable:
    return gguf(add={key: (value, vtype, *([sub_type] if sub_type else []))}, drop_keys=[key])


def temperatures(content) -> Callable:
    return write("tmp", "temps.json", content if isinstance(content, str) else json.dumps(content))


def both(*damages) -> Callable:
    return lambda ws: [d(ws) for d in damages]


def genai(change) -> Callable:
    return edit_json("onnx", "genai_config.json", change)


def decoder(**changes) -> Callable:
    def change(document):
        document["model"]["decoder"].update(changes)
        return document
    return genai(change)


def manifest(change) -> Callable:
    return edit_json("bundle", "edgelm.json", change)


def rezip(extra: dict[str, bytes] | None = None, rename: dict[str, str] | None = None, only: tuple[str, ...] | None = None) -> Callable:
    """Replace {zip} by a zip of {bundle} with `extra` entries added and entries renamed (`only` these of its files)."""
    def damage(ws):
        import zipfile

        folder, archive = Path(ws["bundle"]), Path(ws["zip"])
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
            for path in sorted(folder.iterdir()):
                if only is not None and path.name not in only:
                    continue
                out.write(path, (rename or {}).get(path.name, path.name))
            for name, data in (extra or {}).items():
                out.writestr(name, data)
    return damage


def layers_of(value) -> dict:
    return {"layers": [[value] * 8] * 4}


def one_head(value) -> dict:
    """Layer 0's head 0 at `value`, every other head at 1."""
    return {"layers": [[value] + [1.0] * 7] + [[1.0] * 8] * 3}


GEN = "generate {model} --prompt x"
TOKENFORMER_CONFIG = {"architectures": ["TokenFormerForCausalLM"], "model_type": "tokenformer", "hidden_size": 256, "num_layers": 4,
                      "num_attention_heads": 4, "qkv_slot_num": 256, "proj_slot_num": 256, "ffn_slot_num": 1024, "vocab_size": 4096,
                      "max_position_embeddings": 4096, "layer_norm_eps": 1e-05, "rotary_pct": 0.25, "rotary_emb_base": 10000.0}
LLAMA_CONFIG_KEYS_NEEDED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")

CASES: list[Case] = [
    # --- a model folder and its config.json
    case("folder does not exist", "inspect {tmp}/nowhere", "no such file or folder"),
    case("config.json missing", "inspect {model}", "config.json is missing", remove("model", "config.json")),
    case("config.json not JSON", "inspect {model}", "config.json is not valid JSON", write("model", "config.json", "{not json")),
    case("config.json not UTF-8", "inspect {model}", "config.json is not UTF-8 text", write("model", "config.json", b'{"a": "\xff"}')),
    case("config.json a list", "inspect {model}", "must hold a JSON object", write("model", "config.json", "[1, 2]")),
    # stranger round 11: an ONNX export carried a 1.1 MB config into an edgelm.json no command would read back
    case("config.json past what an export carries", "export {model} --format onnx --out {tmp}/big", "edgelm carries at most 131,072",
         config(task_specific_params={"summarization": "x" * 140_000})),
    *[case(f"config lacks {key}", "inspect {model}", f"lacks '{key}'", without_key("model", "config.json", key))
      for key in LLAMA_CONFIG_KEYS_NEEDED],
    case("hidden_size negative", "inspect {model}", "hidden_size", config(hidden_size=-64)),
    case("hidden_size zero", "inspect {model}", "hidden_size", config(hidden_size=0)),
    case("hidden_size a float", "inspect {model}", "hidden_size", config(hidden_size=64.5)),
    case("hidden_size a string", "inspect {model}", "hidden_size", config(hidden_size="64")),
    case("hidden_size a boolean", "inspect {model}", "hidden_size", config(hidden_size=True)),
    case("hidden_size a trillion", "inspect {model}", "hidden_size = 1,000,000,000,000 is out of range: a dimension is from 1 to 2,147,483,647",
         config(hidden_size=10**12)),
    case("heads do not divide hidden_size", "inspect {model}", "hidden_size 256 is not a multiple of num_attention_heads 12",
         config(num_attention_heads=12, num_key_value_heads=4)),
    case("kv heads do not divide heads", "inspect {model}", "8 attention heads are not a multiple of its 3 key/value heads",
         config(num_key_value_heads=3)),
    case("rms_norm_eps NaN", "inspect {model}", "rms_norm_eps", config(rms_norm_eps=NAN)),
    case("rms_norm_eps negative", "inspect {model}", "rms_norm_eps", config(rms_norm_eps=-1e-5)),
    case("rope_theta zero", "inspect {model}", "rope_theta", config(rope_theta=0)),
    # a string is truthy whatever it says: "false" ran tied, the checkpoint's own lm_head.weight unread (stranger 24)
    case("eos_token_id a string of digits", "generate {model} --prompt x", "config.json's eos_token_id is '0', not a token id",
         config(eos_token_id="0")),
    case("tie_word_embeddings a string", "generate {model} --prompt x", "tie_word_embeddings must be true or false, not 'false'",
         config(tie_word_embeddings="false")),
    case("rope_scaling factor past float32 (torch overflowed at export, gguf-py at packing)", "inspect {model}", "past float32's range",
         config(rope_scaling={"rope_type": "linear", "factor": 1e308})),
    case("rope_theta past float32", "inspect {model}", "rope_theta = 1e+300 is past float32's range", config(rope_theta=1e300)),
    # a byte that is not UTF-8 in an argument reaches Python as a lone surrogate (PEP 383): tokenizers and llama.cpp's
    # tokenizer failed with a traceback
    case("--prompt with a byte that is not UTF-8 (model folder)", "generate {model} --prompt caf\udce9", "not UTF-8"),
    case("--prompt with a byte that is not UTF-8 (ONNX)", "generate {onnx} --prompt caf\udce9", "not UTF-8"),
    case("--prompt with a byte that is not UTF-8 (llama.cpp's tokenizer)", "generate {llama_gguf} --prompt caf\udce9", "not UTF-8"),
    case("--system with a byte that is not UTF-8", "chat {model} --system caf\udce9", "not UTF-8"),
    case("--chat-template-file missing", "chat {model} --chat-template-file {tmp}/none.jinja", "chat template file not found"),
    case("--chat-template-file not a template", "chat {model} --chat-template-file {text}", "renders nothing of the conversation"),
    # stranger 43: the fix named the model's template files
    case("--chat-template-file broken", "chat {model} --chat-template-file {tmp}/broken.jinja", "fix the template file given with --chat-template-file",
         write("tmp", "broken.jinja", "{% for m in messages %}{{ m.content }")),
    case("--prompt-cache path with a byte that is not UTF-8", "chat {model} --prompt-cache {tmp}/bad\udcff.bin",
         "bad\\xff.bin is not UTF-8 text"),  # stranger round 11: written, exit 0
    case("--prompt-cache a file whose read fails", "chat {model} --prompt-cache /proc/self/mem", "cannot read the prompt cache"),
    case("--prompt-cache a folder's path", "chat {model} --prompt-cache {tmp}/cache/", "names no file"),  # round 12: wrote a file `cache`
    case("2,000,000,000 positions at GGUF export (written, then refused by edgelm's own reader as damaged)",
         "export {model} --quant int4 --out {tmp}/m.gguf", "a GGUF holds at most 16,777,216", config(max_position_embeddings=2_000_000_000)),
    case("context length zero", "inspect {model}", "max_position_embeddings", config(max_position_embeddings=0)),
    case("a billion layers (found by the fuzz suite: hours building the module)", "inspect {model}",
         "describes 1000000000 layers, more than the weights' 39 tensors", config(num_hidden_layers=10**9)),
    case("unknown architecture", "inspect {model}", "unknown architecture MambaForCausalLM",
         config(architectures=["MambaForCausalLM"], model_type="mamba")),
    case("architectures a string", "inspect {model}", "architectures", config(architectures="LlamaForCausalLM", model_type="mamba")),
    case("remote code asked for", "inspect {model}", "unknown architecture",
         config(architectures=["EvilForCausalLM"], model_type="evil", auto_map={"AutoModelForCausalLM": "evil.Evil"})),
    case("position encoding the family lacks", "inspect {tokenformer} --position-encoding none", "not available for tokenformer"),
    # --- its weights
    case("no weights", "inspect {model}", "no weights found", remove("model", "model.safetensors")),
    case("safetensors truncated", "inspect {model}", "truncated or damaged", truncate("model", "model.safetensors")),
    case("safetensors garbage", "inspect {model}", "model.safetensors", write("model", "model.safetensors", b"\xff" * 64)),
    case("safetensors header length huge", "inspect {model}", "model.safetensors",
         write("model", "model.safetensors", (2**62).to_bytes(8, "little") + b"{}")),
    case("a tensor missing", "inspect {model}", "model.layers.1.mlp.up_proj.weight",
         tensors(lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))),
    case("an unexpected tensor", "inspect {model}", "unexpected tensors",
         tensors(lambda t: t.update({"model.layers.0.self_attn.rotary_emb.extra": t["model.norm.weight"][:3].clone()}))),
    case("shapes not the config's", "inspect {model}", "shapes do not match", config(intermediate_size=1024)),
    case("an integer tensor", "inspect {model}", "not floating point: model.norm.weight (I8)",
         set_tensor("model.norm.weight", lambda t: t.to(__import__("torch").int8))),
    case("pickle refused", "inspect {model}", "pickle checkpoint refused",
         both(write("model", "pytorch_model.bin", b"\x80\x02}q\x00."), remove("model", "model.safetensors"))),
    case("NaN weight at export", "export {model} --quant f32 --out {tmp}/m.gguf", "holds NaN or infinite values",
         set_tensor("model.norm.weight", NAN)),
    case("infinite weight at ONNX export", "export {model} --format onnx --quant f32 --out {tmp}/m", "holds NaN or infinite values",
         set_tensor("lm_head.weight", INF)),
    case("NaN weight at int8", "export {model} --format onnx --quant int8 --out {tmp}/m", "holds NaN or infinite values",
         set_tensor("model.layers.0.mlp.down_proj.weight", NAN)),
    # --- tokenizer files and chat templates
    case("tokenizer.model garbage", GEN, "tokenizer.model", write("model", "tokenizer.model", b"\x00garbage")),
    case("tokenizer_config.json not JSON", GEN, "tokenizer_config.json", write("model", "tokenizer_config.json", "{")),
    case("tokenizer_config.json not UTF-8", GEN, "tokenizer_config.json", write("model", "tokenizer_config.json", b'{"x": "\xfe"}')),
    case("tokenizer_config.json a list", GEN, "tokenizer_config.json", write("model", "tokenizer_config.json", "[]")),
    case("chat template not a string", "chat {model}", "chat_template", edit_json("model", "tokenizer_config.json", {"chat_template": 7})),
    case("chat template of bad syntax", "chat {model}", "chat template", edit_json("model", "tokenizer_config.json", {"chat_template": "{% for %}"})),
    case("chat template renders nothing", "chat {model}", "renders nothing", edit_json("model", "tokenizer_config.json", {"chat_template": "{{ '' }}"})),
    case("chat template loops forever", "chat {model}", "chat template",
         edit_json("model", "tokenizer_config.json", {"chat_template": "{% for i in range(10**9) %}{% for j in range(10**9) %}x{% endfor %}{% endfor %}"})),
    case("chat template multiplies a string", "chat {model}", "chat template",
         edit_json("model", "tokenizer_config.json", {"chat_template": "{{ 'x' * 10**10 }}"})),
    case("chat template raises a message of many lines and terminal escapes", "chat {model}", "forged\\nok: verified\\x1b]52;c;ZZ\\x07",
         edit_json("model", "tokenizer_config.json", {"chat_template": "{{ raise_exception('forged\\nok: verified\\x1b]52;c;ZZ\\x07') }}"})),
    case("verify a model whose chat template always raises", "verify {onnx}", "the chat template failed to render (no chat here)",
         edit_json("onnx", "tokenizer_config.json", {"chat_template": "{{ raise_exception('no chat here') }}"})),
    # stranger round 12: a stray sparse file beside the graph was hashed in full (20 GB: a minute)
    case("verify an ONNX folder with a stray sparse file", "verify {onnx}", "notes.bin is 21,474,836,480 bytes; edgelm reads at most",
         sparse("onnx", "notes.bin", 20 << 30)),
    case("prompt cache whose header nests past json's recursion", "chat {model} --prompt-cache {tmp}/deep.cache", "not an edgelm prompt cache",
         write("tmp", "deep.cache", (200_000).to_bytes(8, "little") + b"[" * 100_000 + b"]" * 100_000)),
    # --- head temperatures
    case("temperatures of wrong shape", "inspect {model} --head-temperatures {tmp}/temps.json", "4 layers × 8 heads",
         temperatures({"layers": [[1.0] * 8] * 3})),
    case("temperatures not JSON", "inspect {model} --head-temperatures {tmp}/temps.json", "temps.json", temperatures("{")),
    case("temperatures missing", "inspect {model} --head-temperatures {tmp}/none.json", "none.json"),
    case("temperature negative", "inspect {model} --head-temperatures {tmp}/temps.json", "temps.json", temperatures(layers_of(-1.0))),
    case("temperature zero", "inspect {model} --head-temperatures {tmp}/temps.json", "temps.json", temperatures(layers_of(0.0))),
    case("temperature NaN", "inspect {model} --head-temperatures {tmp}/temps.json", "temps.json", temperatures('{"layers": [[NaN]]}')),
    case("temperature a string", "inspect {model} --head-temperatures {tmp}/temps.json", "temps.json", temperatures(layers_of("hot"))),
    case("prompt file of 405 MB (was: 'not what it claims')", "generate {model} --file {tmp}/big.txt",
         "the text file is 405,000,000 bytes; edgelm reads at most 268,435,456 for it — give a text file of at most 268,435,456 bytes with --file",
         sparse("tmp", "big.txt", 405_000_000)),
    case("temperature a boolean (was read as 1.0)", "inspect {model} --head-temperatures {tmp}/temps.json",
         "the table holds something other than numbers", temperatures(layers_of(True))),
    case("temperature past f16", "export {nope} --head-temperatures {tmp}/temps.json --out {tmp}/m.gguf", "past float16's 65504",
         temperatures(layers_of(1e30))),
    # an f32 file holds the folded weights, but llama.cpp's f16 KV cache and ONNX Runtime's fp16 attention do not:
    # one head at 1e30 ran NaN there; the bound on layer 0's queries is ~1e31
    case("temperature past the f16 KV cache (f32 GGUF)", "export {nope} --quant f32 --head-temperatures {tmp}/temps.json --out {tmp}/m.gguf",
         "layer 0's queries (model.layers.0.self_attn.q_proj.weight) to ", temperatures(one_head(1e30))),
    case("temperature past fp16 attention (f32 ONNX)",
         "export {nope} --format onnx --quant f32 --head-temperatures {tmp}/temps.json --out {tmp}/m-onnx",
         "past float16's 65504, which llama.cpp's f16 KV cache and ONNX Runtime's fp16 attention compute in", temperatures(one_head(1e30))),
    # --- options
    case("--max-new-tokens 0", GEN + " --max-new-tokens 0", "--max-new-tokens"),
    case("--temperature negative", GEN + " --temperature -1", "--temperature"),
    case("--top-p above 1", GEN + " --top-p 2", "--top-p"),
    case("--top-k negative", GEN + " --top-k -1", "--top-k"),
    case("--min-p above 1", GEN + " --min-p 1.5", "--min-p"),
    case("--seed negative", GEN + " --seed -1", "--seed"),
    case("--seed past 64 bits", GEN + " --seed 99999999999999999999999", "--seed"),
    case("--repetition-penalty 0", GEN + " --repetition-penalty 0", "'--repeat-penalty': must be a finite number above 0"),
    # every float option has one parser (cli.number): NaN passed `<= 0` and range checks, or was ignored
    case("--repetition-penalty NaN", GEN + " --repetition-penalty nan", "'--repeat-penalty': must be a finite number above 0, not nan"),
    case("--temperature NaN", GEN + " --temperature nan", "'--temp': must be a finite number from 0, not nan"),
    case("--temperature inf", GEN + " --temperature inf", "'--temp': must be a finite number from 0, not inf"),
    case("--top-p NaN", GEN + " --top-p nan", "'--top-p': must be a finite number from 0 to 1, not nan"),
    case("--min-p NaN", GEN + " --min-p nan", "'--min-p': must be a finite number from 0 to 1, not nan"),
    case("chat --top-p NaN", "chat {model} --top-p nan", "'--top-p': must be a finite number from 0 to 1, not nan"),
    case("chat --temperature -inf", "chat {model} --temperature -inf", "'--temp': must be a finite number from 0"),
    case("parity --max-kld NaN", "parity {onnx} --reference {model} --max-kld nan", "'--max-kld': must be a finite number from 0"),
    case("parity --max-ppl-increase inf", "parity {onnx} --reference {model} --max-ppl-increase inf", "'--max-ppl-increase'"),
    Case("--stop empty", (*GEN.split(), "--stop", ""), "--stop \"\" would stop before the first token"),
    case("--device unknown", GEN + " --device tpu", "unknown --device 'tpu'"),
    case("--threads 0", GEN + " --threads 0", "--threads"),
    case("--gpu-layers negative", GEN + " --gpu-layers -5", "--gpu-layers"),
    case("--provider unknown", "generate {onnx} --prompt x --provider abacus", "abacus"),
    case("unknown option", GEN + " --temprature 1", "--temprature"),
    case("--prompt missing", "generate {model}", "--prompt"),
    case("perplexity --ctx 1", "perplexity {model} --text {text} --ctx 1", "--ctx"),
    case("perplexity --stride past --ctx", "perplexity {model} --text {text} --ctx 8 --stride 8", "--stride 8 must be below --ctx 8"),
    case("perplexity text missing", "perplexity {model} --text {tmp}/none.txt", "text file not found"),
    case("perplexity text not UTF-8", "perplexity {model} --text {tmp}/latin1.txt", "UTF-8",
         write("tmp", "latin1.txt", "caf\xe9 au lait ".encode("latin-1") * 20)),
    case("perplexity text too short", "perplexity {model} --text {tmp}/short.txt", "fewer than 2 tokens", write("tmp", "short.txt", "")),
    case("bench --new-tokens 0", "bench {model} --new-tokens 0", "--new-tokens"),
    case("parity reference missing", "parity {onnx} --reference {tmp}/none", "no such file or folder"),
    # llama.cpp's conventions (stranger round 7): a conflict is named, a type edgelm does not make says where it is made
    case("export --quant int8 with a 4-bit --gguf-type (wrote Q4_0 silently)", "export {model} --quant int8 --gguf-type Q4_0 --out {tmp}/m.gguf",
         "--quant int8 and --gguf-type Q4_0 name two precisions"),
    case("export --gguf-type IQ4_XS", "export {model} --gguf-type IQ4_XS --out {tmp}/m.gguf", "edgelm does not make --gguf-type 'IQ4_XS'"),
    case("export --quant iq2_xs (stranger 23: 'unknown')", "export {model} --quant iq2_xs --out {tmp}/m.gguf",
         "edgelm does not make --quant 'iq2_xs', a llama.cpp type llama-quantize makes"),
    case("generate --provider unknown (was: install the onnxruntime package built for bogus)", "generate {onnx} --prompt x --provider bogus",
         "unknown provider 'bogus'"),
    # --force replaces an output, never an input (stranger round 7: each of these replaced its input and exited 0)
    case("calibrate --out onto the model's config.json", "calibrate {model} --text {text} --target-length 64 --out {model}/config.json --force",
         "the output overlaps the input"),
    case("calibrate --out onto its --text", "calibrate {model} --text {text} --target-length 64 --out {text} --force", "the output overlaps the input"),
    case("export --out onto its --calibration text", "export {model} --quant int4 --calibration {text} --out {text} --force",
         "the output overlaps the input"),
    case("export --out onto its --head-temperatures", "export {model} --head-temperatures {tmp}/temps.json --out {tmp}/temps.json --force",
         "the output overlaps the input", temperatures(layers_of(1.0))),
    case("ONNX edgelm.json records NaN head temperatures (stranger round 6: blamed on the reference's config.json)",
         "parity {onnx} --reference {model}", "the head temperatures it records (an ONNX folder's edgelm.json head_temperatures",
         edit_json("onnx", "edgelm.json", lambda d: {**d, "head_temperatures": {"layers": [[float("nan")] * 8] * 4, "baked_into_weights": False}})),
    case("parity --tokens 1", "parity {onnx} --reference {model} --tokens 1", "--tokens"),
    case("parity --max-kld negative", "parity {onnx} --reference {model} --max-kld -1", "--max-kld"),
    # --- export and init outputs
    case("export format unknown", "export {model} --format tflite --out {tmp}/m", "tflite"),
    case("export quant unknown", "export {model} --quant int3 --out {tmp}/m.gguf", "int3"),
    case("--gguf-type unknown", "export {model} --gguf-type Q9_X --out {tmp}/m.gguf", "Q9_X"),
    case("--gguf-type needs an importance matrix", "export {model} --gguf-type Q2_K_S --out {tmp}/m.gguf", "Q2_K_S needs an importance matrix"),
    case("export output exists", "export {model} --out {tmp}/m.gguf", "output already exists", write("tmp", "m.gguf", "x")),
    case("export onto its input", "export {model} --out {model} --force", "overlaps the input"),
    case("export onto its weights", "export {model} --out {model}/model.safetensors --force", "overlaps the input"),
    case("export into its input", "export {model} --out {model}/sub --force", "overlaps the input"),
    case("export under a file", "export {model} --out {tmp}/afile/m.gguf", "is a file, not a folder", write("tmp", "afile", "x")),
    case("init unknown preset", "init tiny-mamba {tmp}/x", "unknown preset"),
    case("init output exists", "init tiny-rope {model}", "output already exists"),
    case("calibrate on a config whose edgelm.training_length is text", "calibrate {model} --text {text} --target-length 64 --out {tmp}/t.json",
         "config.json's edgelm.training_length is 'long', not a whole number of tokens", edit_json("model", "config.json", lambda c: {**c, "edgelm": {**c.get("edgelm", {}), "training_length": "long"}})),
    case("calibrate --init negative", "calibrate {nope} --text {text} --target-length 512 --out {tmp}/t.json --init -1", "must be a finite number above 0"),
    case("calibrate --min negative", "calibrate {nope} --text {text} --target-length 512 --out {tmp}/t.json --min -5", "must be a finite number above 0"),
    case("calibrate --init past float32 (stranger 25: a traceback)", "calibrate {nope} --text {text} --target-length 512 --out {tmp}/t.json --init 1e39",
         "must be a finite number above 0 to 10000"),
    case("calibrate --min 0", "calibrate {nope} --text {text} --target-length 512 --out {tmp}/t.json --min 0", "must be a finite number above 0"),
    case("calibrate --lr NaN", "calibrate {nope} --text {text} --target-length 512 --out {tmp}/t.json --lr nan", "'--lr': must be a finite number above 0"),
    case("calibrate --lr negative", "calibrate {nope} --text {text} --target-length 512 --out {tmp}/t.json --lr -1", "'--lr': must be a finite number above 0"),
    case("calibrate --lr-late negative", "calibrate {nope} --text {text} --target-length 512 --out {tmp}/t.json --lr-late -1", "'--lr-late': must be a finite number above 0"),
    case("calibrate --init NaN", "calibrate {nope} --text {text} --target-length 512 --out {tmp}/t.json --init nan", "must be a finite number above 0"),
    # --- GGUF files
    case("GGUF truncated", "generate {gguf} --prompt x", "gguf", truncate("gguf")),
    case("not a GGUF", "generate {gguf} --prompt x", "gguf", lambda ws: Path(ws["gguf"]).write_bytes(b"PK\x03\x04" + b"\0" * 60)),
    case("GGUF architecture not edgelm.family's", "inspect {gguf}", "general.architecture is 'mamba9'", gguf(arch="mamba9")),
    case("GGUF architecture no runtime knows", "generate {gguf} --prompt x", "nor edgelm's ggml executor knows arch 'mamba9'", gguf(arch="mamba9")),
    # a stranger relabelled a llama GGUF: it was diagnosed as TokenFormer's first layout
    case("llama GGUF relabelled tokenformer", "generate {llama_gguf} --prompt x", "none of its tokenformer.* keys",
         gguf(arch="tokenformer", key="llama_gguf")),
    case("GGUF tokenizer file escaping", "generate {gguf} --prompt x", "names a tokenizer file edgelm does not know",
         gguf(add={"edgelm.tokenizer_file.../escaped.txt": ("owned", GGUFValueType.STRING)})),
    case("GGUF tokenizer file absolute", "generate {gguf} --prompt x", "names a tokenizer file edgelm does not know",
         gguf(add={"edgelm.tokenizer_file./tmp/escaped.txt": ("owned", GGUFValueType.STRING)})),
    case("GGUF tokenizer file of wrong type", "generate {gguf} --prompt x", "is not a text, base64 text or byte array file",
         gguf_key("edgelm.tokenizer_file.tokenizer.json", 7, GGUFValueType.INT32)),
    case("GGUF tokenizer file bad base64", "generate {gguf} --prompt x", "is not a text, base64 text or byte array file",
         gguf(add={"edgelm.tokenizer_file_base64.tokenizer.model": ("not base64!", GGUFValueType.STRING)})),
    # a model's recommended sampling (generation_config.json, general.sampling.*) goes through the gate its option has
    case("generation_config.json sampling top_k a text", "export {model} --out {tmp}/m.gguf", "generation_config.json's top_k must be a whole number",
         write("model", "generation_config.json", '{"do_sample": true, "top_k": "20"}')),
    case("generation_config.json sampling temperature NaN", "chat {model}", "generation_config.json's temperature must be a finite number",
         write("model", "generation_config.json", '{"do_sample": true, "temperature": NaN}')),
    # stranger round 11b: past float32 / int32 (GGUF's types) they were struct tracebacks at export, or written as 0
    case("generation_config.json temperature past float32", "export {model} --out {tmp}/m.gguf", "temperature must be a finite number",
         write("model", "generation_config.json", '{"do_sample": true, "temperature": 1e39}')),
    case("generation_config.json repetition penalty below float32", "export {model} --out {tmp}/m.gguf", "not 0.0",
         write("model", "generation_config.json", '{"do_sample": true, "repetition_penalty": 1e-320}')),
    case("generation_config.json top_k past int32", "export {model} --format onnx --out {tmp}/o", "to 2147483647",
         write("model", "generation_config.json", '{"do_sample": true, "top_k": 99999999999999999999999}')),
    case("generation_config.json do_sample a text", "chat {model}", "do_sample is yes, not true or false",
         write("model", "generation_config.json", '{"do_sample": "yes", "temperature": 0.5}')),
    case("GGUF recommended temperature negative", "chat {llama_gguf}", "general.sampling.* keys: temperature must be a finite number from 0",
         gguf(add={"general.sampling.temp": (-1.0, GGUFValueType.FLOAT32)}, drop_keys={"general.sampling.temp"}, key="llama_gguf")),
    case("GGUF recommended top_k negative", "chat {llama_gguf}", "top_k must be a whole number from 0",
         gguf(add={"general.sampling.top_k": (-5, GGUFValueType.INT32)}, drop_keys={"general.sampling.top_k"}, key="llama_gguf")),
    case("GGUF chat template past 1 MB", "generate {gguf} --prompt x", "holds 1,048,577 bytes of text",
         gguf_key("tokenizer.chat_template", "x" * (2**20 + 1), GGUFValueType.STRING)),
    case("GGUF tokenizer.json not JSON", "generate {gguf} --prompt x", "tokenizer.json",
         gguf_key("edgelm.tokenizer_file.tokenizer.json", "{", GGUFValueType.STRING)),
    case("GGUF a tensor missing", "generate {gguf} --prompt x", "tensors missing", gguf(drop_tensors=["token_embd.weight"])),
    case("llama GGUF llama.cpp refuses (a tensor missing)", "generate {llama_gguf} --prompt x", "llama.cpp could not load this GGUF",
         gguf(drop_tensors=["output_norm.weight"], key="llama_gguf")),
    # per-block counts llama.cpp builds each block's graph from but checks tensors against at block 0's: a kv head count of
    # [2, 2, 3, 2] aborted the process in ggml (stranger 44); inspect too, where the file carries no edgelm.config
    case("llama GGUF per-block kv heads its tensors lack", "generate {llama_gguf} --prompt x", "blk.2.attn_k.weight has 64 rows",
         gguf(add={"llama.attention.head_count_kv": ([2, 2, 3, 2], GGUFValueType.ARRAY, GGUFValueType.UINT32)},
              drop_keys={"llama.attention.head_count_kv"}, key="llama_gguf")),
    case("llama GGUF per-block feed-forward length 0", "inspect {llama_gguf}", "blk.1.ffn_gate.weight has 768 rows",
         gguf(add={"llama.feed_forward_length": ([768, 0, 768, 768], GGUFValueType.ARRAY, GGUFValueType.INT32)},
              drop_keys={"llama.feed_forward_length"} | {f"edgelm.{k}" for k in ("config", "family")}, key="llama_gguf")),
    case("llama GGUF per-block heads fewer than blocks", "bundle {llama_gguf} --out {tmp}/b", "attention.head_count has 2 values for 4 blocks",
         gguf(add={"llama.attention.head_count": ([8, 8], GGUFValueType.ARRAY, GGUFValueType.UINT32)},
              drop_keys={"llama.attention.head_count"}, key="llama_gguf")),
    # what ggml and llama.cpp assert on (stranger 47: SIGABRT in every command, and a decode that never ended)
    case("GGUF alignment of another type", "inspect {llama_gguf}", "general.alignment is not a uint32",
         gguf(add={"general.alignment": (32, GGUFValueType.UINT64)}, drop_keys={"general.alignment"}, key="llama_gguf")),
    case("llama GGUF rotary dimensions odd", "generate {llama_gguf} --prompt x", "rope.dimension_count is 17, not an even number",
         gguf(add={"llama.rope.dimension_count": (17, GGUFValueType.UINT32)}, drop_keys={"llama.rope.dimension_count"}, key="llama_gguf")),
    case("llama GGUF rotary dimensions 0", "verify {llama_gguf}", "rope.dimension_count is 0, not an even number",
         gguf(add={"llama.rope.dimension_count": (0, GGUFValueType.UINT32)}, drop_keys={"llama.rope.dimension_count"}, key="llama_gguf")),
    case("GGUF strings past the bound", "inspect {llama_gguf}", "metadata arrays hold more than 1,048,576 strings",
         gguf(add={"zz.strings": ([""] * ((1 << 20) + 1), GGUFValueType.ARRAY, GGUFValueType.STRING)}, key="llama_gguf")),
    case("GGUF position encoding empty", "inspect {gguf}", "edgelm.position_encoding",
         gguf_key("edgelm.position_encoding", "", GGUFValueType.STRING)),
    case("GGUF keys not edgelm.config's", "inspect {gguf}", "tokenformer.block_count is 'two', but edgelm.config says 4",
         gguf_key("tokenformer.block_count", "two", GGUFValueType.STRING)),
    case("GGUF block count not a number", "generate {gguf} --prompt x", "tokenformer.block_count is 'two', not a whole number",
         gguf_key("tokenformer.block_count", "two", GGUFValueType.STRING)),
    case("GGUF block count one more", "generate {gguf} --prompt x", "6 tensors missing: blk.4.attn_output",
         gguf_key("tokenformer.block_count", 5, GGUFValueType.UINT32)),
    case("GGUF slots not the tensors'", "generate {gguf} --prompt x", "tensors of the wrong shape: blk.0.ffn.key_tokens",
         gguf_key("tokenformer.feed_forward_length", 512, GGUFValueType.UINT32)),
    case("GGUF heads do not divide the width", "generate {gguf} --prompt x", "embedding_length 256 is not a multiple of attention.head_count 3",
         gguf_key("tokenformer.attention.head_count", 3, GGUFValueType.UINT32)),
    case("GGUF rotary dims odd", "generate {gguf} --prompt x", "tokenformer.rope.dimension_count is 7",
         gguf_key("tokenformer.rope.dimension_count", 7, GGUFValueType.UINT32)),
    case("GGUF a weight of integer type", "generate {gguf} --prompt x", "1 tensors of a type edgelm's executor does not run: blk.0.ffn.key_tokens",
         gguf(replace_tensors={"blk.0.ffn.key_tokens": np.zeros((1024, 256), dtype=np.int32)})),
    # a context the file declares is allocated only up to 4096 unless asked for (test_user_options.py)
    case("GGUF context past memory", "generate {gguf} --prompt x --ctx-size 16777216", "of KV cache",
         gguf_key("tokenformer.context_length", 1 << 24, GGUFValueType.UINT32)),
    case("GGUF block count huge", "generate {gguf} --prompt x", "tokenformer.block_count is 2147483648",
         gguf_key("tokenformer.block_count", 2**31, GGUFValueType.UINT32)),
    case("GGUF norm epsilon NaN", "generate {gguf} --prompt x", "tokenformer.attention.layer_norm_epsilon is nan",
         gguf_key("tokenformer.attention.layer_norm_epsilon", NAN, GGUFValueType.FLOAT32)),
    case("GGUF rope base zero", "generate {llama_gguf} --prompt x", "llama.rope.freq_base is 0.0, not a finite number > 0",
         gguf(add={"llama.rope.freq_base": (0.0, GGUFValueType.FLOAT32)}, drop_keys={"llama.rope.freq_base"}, key="llama_gguf")),
    case("GGUF edgelm.config not JSON", "inspect {gguf}", "edgelm.config is not valid JSON",
         gguf_key("edgelm.config", "{", GGUFValueType.STRING)),
    case("GGUF edgelm.config layers negative", "inspect {gguf}", "num_layers",
         gguf_key("edgelm.config", json.dumps({**TOKENFORMER_CONFIG, "num_layers": -4}), GGUFValueType.STRING)),
    case("GGUF edgelm.config context zero", "inspect {gguf}", "max_position_embeddings",
         gguf_key("edgelm.config", json.dumps({**TOKENFORMER_CONFIG, "max_position_embeddings": 0}), GGUFValueType.STRING)),
    case("GGUF family unknown", "inspect {gguf}", "was not written by edgelm",
         gguf_key("edgelm.family", "mamba", GGUFValueType.STRING)),
    # --- ONNX folders
    case("ONNX folder with no config at all", "generate {onnx} --prompt x", "genai_config.json and config.json are both missing",
         both(remove("onnx", "genai_config.json"), remove("onnx", "config.json"))),
    case("genai_config.json not JSON", "generate {onnx} --prompt x", "genai_config.json", write("onnx", "genai_config.json", "{")),
    case("genai_config.json a list", "generate {onnx} --prompt x", "genai_config.json", write("onnx", "genai_config.json", "[]")),
    case("ONNX filename escaping", "generate {onnx} --prompt x", "is not a plain file name inside the folder", decoder(filename="../x.onnx")),
    case("ONNX filename absolute", "generate {onnx} --prompt x", "is not a plain file name inside the folder", decoder(filename="/etc/hostname")),
    case("ONNX layer count a string", "generate {onnx} --prompt x", "num_hidden_layers", decoder(num_hidden_layers="two")),
    case("ONNX layer count not the graph's", "generate {onnx} --prompt x", "graph inputs unfed: past_key_values.3.key",
         decoder(num_hidden_layers=3)),
    case("ONNX head size negative", "generate {onnx} --prompt x", "head_size", decoder(head_size=-8)),
    # (as a graph without rotary tables, whose positions would refuse the context first: the next row)
    case("ONNX context past memory (found by the fuzz suite)", "generate {onnx} --prompt x -c 99001194", "GB of KV cache",
         both(genai(lambda d: {**d, "model": {**d["model"], "context_length": 99001194}}),
              edit_json("onnx", "edgelm.json", lambda d: {k: v for k, v in d.items() if k != "rotary_table_positions"}))),
    case("ONNX context past its rotary tables", "generate {onnx} --prompt x -c 99001194",
         "a context of 99,001,194 tokens is past the 4,096 positions of this model's rotary tables",
         genai(lambda d: {**d, "model": {**d["model"], "context_length": 99001194}})),
    case("ONNX context length a list", "generate {onnx} --prompt x", "context_length",
         genai(lambda d: {**d, "model": {**d["model"], "context_length": [1]}})),
    case("ONNX context length a boolean (was a context of 1)", "generate {onnx} --prompt x", "model.context_length is True, not an integer of at least 1",
         genai(lambda d: {**d, "model": {**d["model"], "context_length": True}})),
    case("ONNX layer count a boolean", "generate {onnx} --prompt x", "num_hidden_layers is True", decoder(num_hidden_layers=True)),
    case("ONNX layer count 10^9 (stranger round 6: out of memory making a name per layer)", "generate {onnx} --prompt x",
         "model.decoder.num_hidden_layers is 1000000000, not an integer from 1 to 512", decoder(num_hidden_layers=10**9)),
    case("ONNX attention heads negative (reached onnxruntime-genai in a bundle)", "bundle {onnx} --out {tmp}/b",
         "model.decoder.num_attention_heads is -8, not an integer of at least 1", decoder(num_attention_heads=-8)),
    case("genai_config search temperature NaN", "generate {onnx} --prompt x", "search.temperature must be a finite number from 0, not nan",
         genai(lambda d: {**d, "search": {**d.get("search", {}), "temperature": float("nan")}})),
    case("genai_config search top_p past 1", "inspect {onnx}", "search.top_p must be a finite number from 0 to 1, not 2",
         genai(lambda d: {**d, "search": {**d.get("search", {}), "top_p": 2}})),
    case("genai_config eos a string", "generate {onnx} --prompt x", "model.eos_token_id is 'x', not a token id",
         genai(lambda d: {**d, "model": {**d["model"], "eos_token_id": "x"}})),
    case("genai_config share buffer a string", "generate {onnx} --prompt x", "search.past_present_share_buffer is 'yes', not true or false",
         genai(lambda d: {**d, "search": {**d.get("search", {}), "past_present_share_buffer": "yes"}})),
    case("genai_config KV names a %s format (was: cannot load model.onnx)", "generate {onnx} --prompt x",
         "genai_config.json is not a decoder description edgelm can run (TypeError: model.decoder's past_key_names 'past_key_values.%s.key' "
         "is not a name with one %d for the layer)",
         genai(lambda d: {**d, "model": {**d["model"], "decoder": {**d["model"]["decoder"], "inputs": {
             **d["model"]["decoder"]["inputs"], "past_key_names": "past_key_values.%s.key"}}}})),
    case("genai_config KV names two %d", "generate {onnx} --prompt x", "present_value_names 'present.%d.%d' is not a name with one %d",
         genai(lambda d: {**d, "model": {**d["model"], "decoder": {**d["model"]["decoder"], "outputs": {
             **d["model"]["decoder"]["outputs"], "present_value_names": "present.%d.%d"}}}})),
    case("genai_config logits name not the graph's", "generate {onnx} --prompt x", "genai_config.json does not describe this graph: it names the graph lacks: scores",
         genai(lambda d: {**d, "model": {**d["model"], "decoder": {**d["model"]["decoder"], "outputs": {
             **d["model"]["decoder"]["outputs"], "logits": "scores"}}}})),
    # stranger round 12: a role named twice ran with exit 0 (garbage text) or was a traceback in perplexity
    case("genai_config logits named a present buffer", "generate {onnx} --prompt x", "it names 'present.0.key' for two roles",
         genai(lambda d: {**d, "model": {**d["model"], "decoder": {**d["model"]["decoder"], "outputs": {
             **d["model"]["decoder"]["outputs"], "logits": "present.0.key"}}}})),
    case("genai_config position_ids named the attention mask", "perplexity {onnx}", "it names 'attention_mask' for two roles",
         genai(lambda d: {**d, "model": {**d["model"], "decoder": {**d["model"]["decoder"], "inputs": {
             **d["model"]["decoder"]["inputs"], "position_ids": "attention_mask"}}}})),
    case("edgelm.json rotary positions a boolean", "generate {onnx} --prompt x", "rotary_table_positions is True, not a count",
         edit_json("onnx", "edgelm.json", {"rotary_table_positions": True})),
    case("model.onnx missing", "generate {onnx} --prompt x", "model.onnx", remove("onnx", "model.onnx")),
    case("model.onnx garbage", "generate {onnx} --prompt x", "model.onnx", write("onnx", "model.onnx", b"\x08\x07garbage")),
    # --- bundles
    case("manifest missing", "verify {bundle}", "no edgelm.json manifest", remove("bundle", "edgelm.json")),
    case("manifest not JSON", "verify {bundle}", "not valid JSON", write("bundle", "edgelm.json", "{")),
    case("manifest of another version", "verify {bundle}", "manifest_version 99", manifest({"manifest_version": 99})),
    case("manifest files a list", "verify {bundle}", "'files' is not a table of files", manifest({"files": ["model.ort"]})),
    case("manifest model outside", "verify {bundle}", "is not one of the files it lists", manifest({"model": "../outside.gguf"})),
    case("manifest names a file outside", "verify {bundle}", "outside the bundle",
         manifest(lambda m: {**m, "files": {**m["files"], "../x": {"sha256": "0" * 64, "bytes": 1}}})),
    case("manifest entry without sha256", "verify {bundle}", "needs a sha256 string",
         manifest(lambda m: {**m, "files": {k: {"bytes": v["bytes"]} for k, v in m["files"].items()}})),
    case("manifest bytes negative (was: a sha256 mismatch)", "verify {bundle}", "says its size is -5 bytes, not a count of 0 or more",
         manifest(lambda m: {**m, "files": {k: {**v, "bytes": -5} for k, v in m["files"].items()}})),
    case("manifest bytes a boolean", "verify {bundle}", "says its size is True bytes",
         manifest(lambda m: {**m, "files": {k: {**v, "bytes": True} for k, v in m["files"].items()}})),
    case("manifest version a boolean", "verify {bundle}", "manifest_version True", manifest({"manifest_version": True})),
    # verify fails these (exit 1, test_hostile_input); a command that would run the bundle refuses them
    case("bundle file changed", "generate {bundle} --prompt x", "does not match its sha256", write("bundle", "genai_config.json", "{}")),
    case("bundle file missing", "generate {bundle} --prompt x", "genai_config.json is in the manifest but not in the bundle",
         remove("bundle", "genai_config.json")),
    case("bundle file not listed", "generate {bundle} --prompt x", "payload.sh is in the bundle but not in its manifest", write("bundle", "payload.sh", "echo hi")),
    case("zip entry not listed", "generate {zip} --prompt x", "zeros.bin is in the archive but not in its manifest", rezip(extra={"zeros.bin": b"\0" * (8 << 20)})),
    case("zip entry escaping", "verify {zip}", "outside the bundle", rezip(extra={"../evil.txt": b"x"})),
    case("zip folder entry (was: outside the bundle)", "verify {zip}", "'a/b/c/', not a file at the top of the bundle",
         rezip(extra={"a/b/c/": b""})),
    case("zip not a zip", "verify {zip}", "not a readable zip", lambda ws: Path(ws["zip"]).write_bytes(b"PK\x05\x06garbage")),
    case("zip without a manifest", "verify {zip}", "edgelm.json", rezip(rename={"edgelm.json": "manifest.txt"})),
    # stranger round 11: verify named the temporary folder it unpacked into (/tmp/tmpXXXX: model.ort is missing)
    # (verify fails it, exit 1: files its manifest lists are missing; test_hostile_input)
    case("zip holding only its manifest", "generate {zip} --prompt x", "bundle-zip.zip: ", rezip(only=("edgelm.json",))),
    # stranger round 11b: what an app reads from the manifest passed verify with NaN, -1 and 2^62 in it
    case("manifest sampling NaN", "verify {bundle}", "its sampling_defaults: temperature must be a finite number",
         manifest(lambda m: {**m, "sampling_defaults": {"temperature": float("nan")}})),
    case("manifest context length past any", "verify {bundle}", "its context_length 4611686018427387904 is not a count",
         manifest(lambda m: {**m, "context_length": 2**62})),
    # stranger round 12: a manifest edited after bundling passed verify, and chat sampled with it (a stray key: a traceback);
    # the commands that open it refuse it, and verify fails it (exit 1, test_certificate)
    case("manifest sampling forged", "inspect {bundle}", "the manifest states sampling_defaults temperature 2.0",
         manifest(lambda m: {**m, "sampling_defaults": {"temperature": 2.0}})),
    case("manifest sampling stray key", "chat {bundle}", "its sampling_defaults name 'seed', not one of",
         manifest(lambda m: {**m, "sampling_defaults": {**m["sampling_defaults"], "seed": 3}})),
    case("manifest context forged", "inspect {bundle}", "the manifest states context_length 64",
         manifest(lambda m: {**m, "context_length": 64})),
    case("bundle onto its input", "bundle {bundle} --out {bundle} --force", "overlaps the input"),
    case("bundle output exists", "bundle {onnx} --out {bundle}", "output already exists"),
    case("genai_config search a list", "bundle {onnx} --out {tmp}/b", "search is a list, not an object of options",
         genai(lambda d: {**d, "search": [1, 2]})),
    case("genai_config decoder.inputs a list", "bundle {onnx} --out {tmp}/b", "model.decoder.inputs is a list",
         decoder(inputs=["input_ids"])),
    case("bundle a desktop-only GGUF", "bundle {gguf} --out {tmp}/b", "no mobile runtime can load this"),
]
