"""Where a reply ends, in every format as the engines decide it: eos, the end-of-turn tokens llama.cpp ends a
generation at by their text (ChatML's <|im_end|>, Llama 3's <|eot_id|>…), and every id config.json or
generation_config.json lists as eos_token_id (transformers' generate stops at each; Llama 3.x Instruct lists three).

Stranger round 10: a Qwen2-layout folder whose tokenizer says eos <|endoftext|> (as Qwen2.5 base) replied
' H<|im_end|> H<|im_end|> H<|im_end|>' in edgelm's chat on the folder and its ONNX export, and ' H H H' on its
GGUF, where llama-cpp-python's create_chat_completion on the same GGUF stops at ' H'; a config.json listing two
eos ids ran past the second, and the ONNX export's genai_config kept one, so onnxruntime-genai ran past it too.

The fixture: a tiny Qwen2 from transformers' own Qwen2Config, the shipped BPE tokenizer with <|im_start|> and
<|im_end|> added as special tokens (by the tokenizers library), a ChatML template, and weights set so that greedy
decoding answers every prompt with one word token and then the end token the case names."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer

import edgelm
from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.models import open_checkpoint

SHIPPED_BPE = Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-ngen4"
CHATML = ("{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
MESSAGES = [{"role": "user", "content": "Hi there"}]


def write_folder(folder: Path, eos_token: str, ends_with: str, stated_eos: list[str] | None = None) -> dict[str, int]:
    """The folder; returns the ids of the tokens it names. Every position's hidden state is the one-hot
    direction of the embedding's column 0, whose sign says whether the input is the word token: the LM head
    then gives the word after anything else, and `ends_with` after the word."""
    folder.mkdir(parents=True)
    tokenizer = Tokenizer.from_file(str(SHIPPED_BPE / "tokenizer.json"))
    tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    ids = {text: tokenizer.token_to_id(text) for text in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", ".")}
    ids["word"] = tokenizer.encode(" H").ids[0]
    special = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": eos_token, "add_bos_token": False,
        "chat_template": CHATML, "added_tokens_decoder": {str(ids[t]): {"content": t, **special} for t in ("<|im_start|>", "<|im_end|>")}}))
    vocab = 4096 + 2
    config = transformers.Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=False, use_sliding_window=False, bos_token_id=None,
                                      eos_token_id=[ids[t] for t in stated_eos] if stated_eos else ids[eos_token])
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "o_proj" in name or "down_proj" in name:
                param.zero_()  # the residual stream stays the embedding
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.normal_(0, 0.02)
        embed[:, 0] = -1.0
        embed[ids["word"], 0] = 1.0
        head.zero_()
        head[ids["word"], 0] = -1.0
        head[ids[ends_with], 0] = 1.0
    model.save_pretrained(folder)
    return ids


def replies(folder: Path, tmp_path: Path) -> dict[str, str]:
    """edgelm's chat reply on the folder, its f32 GGUF and its f32 ONNX export."""
    checkpoint = open_checkpoint(folder, position_encoding="rope")
    artifacts = {"folder": folder, "gguf": export_gguf(checkpoint, tmp_path / "m.gguf", "f32", certificate=False).path,
                 "onnx": export_onnx(checkpoint, tmp_path / "onnx", "f32", certificate=False).path}
    got = {}
    for form, path in artifacts.items():
        with edgelm.load(path, position_encoding="rope" if form == "folder" else None) as model:
            got[form] = model.chat(MESSAGES, max_new_tokens=6)
    return got | {"paths": artifacts}


def test_a_chatml_reply_ends_at_im_end_though_eos_is_endoftext(tmp_path):
    """As Qwen2.5 base ships: eos <|endoftext|>, a ChatML template. llama.cpp ends at <|im_end|> by its text."""
    from llama_cpp import Llama

    write_folder(tmp_path / "model", "<|endoftext|>", ends_with="<|im_end|>")
    got = replies(tmp_path / "model", tmp_path)
    llm = Llama(model_path=str(got["paths"]["gguf"]), n_ctx=256, verbose=False)
    theirs = llm.create_chat_completion(MESSAGES, max_tokens=6, temperature=0)["choices"][0]["message"]["content"]
    assert theirs == " H"
    assert {form: got[form] for form in ("folder", "gguf", "onnx")} == {"folder": " H", "gguf": " H", "onnx": " H"}


def test_every_eos_config_json_lists_ends_a_reply_in_every_format(tmp_path):
    """As Llama 3.x Instruct ships: config.json's eos_token_id a list. transformers stops at the second; so do
    edgelm's formats, and onnxruntime-genai on the export, whose genai_config lists both."""
    from .genai import genai_greedy

    ids = write_folder(tmp_path / "model", "<|im_end|>", ends_with="<|endoftext|>", stated_eos=["<|im_end|>", "<|endoftext|>"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    prompt = transformers.AutoTokenizer.from_pretrained(tmp_path / "model").apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt):].tolist()
    assert out == [ids["word"], ids["<|endoftext|>"]]  # the reference stops at the second listed eos
    got = replies(tmp_path / "model", tmp_path)
    assert {form: got[form] for form in ("folder", "gguf", "onnx")} == {"folder": " H", "gguf": " H", "onnx": " H"}
    onnx = got["paths"]["onnx"]
    assert json.loads((onnx / "genai_config.json").read_text())["model"]["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert json.loads((onnx / "config.json").read_text())["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert genai_greedy(onnx, prompt, 6) == [ids["word"], ids["<|endoftext|>"]]


def test_a_listed_eos_llama_cpp_knows_no_text_for_ends_the_gguf_reply_too(tmp_path):
    """Stranger round 10b: generation_config.json listing '.' beside eos ended the folder's and the ONNX export's
    replies, not the GGUF's (it stated eos alone, and llama.cpp ends at no '.' by its text). The GGUF states it as
    llama.cpp's end-of-turn id; llama-cpp-python's create_chat_completion stops there too."""
    from llama_cpp import Llama

    write_folder(tmp_path / "model", "<|im_end|>", ends_with=".", stated_eos=["<|im_end|>", "."])
    got = replies(tmp_path / "model", tmp_path)
    assert {form: got[form] for form in ("folder", "gguf", "onnx")} == {"folder": " H", "gguf": " H", "onnx": " H"}
    llm = Llama(model_path=str(got["paths"]["gguf"]), n_ctx=256, verbose=False)
    assert llm.create_chat_completion(MESSAGES, max_tokens=6, temperature=0)["choices"][0]["message"]["content"] == " H"


def test_more_listed_eos_than_a_gguf_can_state_is_refused(tmp_path):
    from edgelm.errors import UserError

    write_folder(tmp_path / "model", "<|im_end|>", ends_with=".", stated_eos=["<|im_end|>", ".", "word", "<|im_start|>"])
    with pytest.raises(UserError, match="lists 4 eos_token_id values, 3 of them no end-of-turn token llama.cpp knows"):
        export_gguf(open_checkpoint(tmp_path / "model", position_encoding="rope"), tmp_path / "m.gguf", "f32", certificate=False)


@pytest.mark.parametrize("stated", [{"eos_token_id": "2"}, {"eos_token_id": [1, "x"]}])
def test_an_eos_token_id_that_is_no_id_is_one_line(tmp_path, stated):
    from edgelm.errors import UserError
    from edgelm.tokenizer import load_tokenizer

    shutil.copytree(SHIPPED_BPE, tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(stated))
    with pytest.raises(UserError, match="generation_config.json's eos_token_id is .* not a token id or a list of them"):
        load_tokenizer(tmp_path / "m")
