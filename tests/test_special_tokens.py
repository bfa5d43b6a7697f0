"""Special-token text, one rule for every tokenizer kind: `encode(text, special=True)` gives what
transformers' `tokenizer(text)` gives (the text `<|endoftext|>` is id 0), `special=False` what its
`split_special_tokens=True` gives; a chat's prompt is transformers' `apply_chat_template(tokenize=True)`."""

from pathlib import Path

import pytest

from edgelm.chat import Conversation
from edgelm.formats import LoadOptions, open_artifact

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "models"
TEXTS = [
    "User: Hello\nAssistant: Hi.\n<|endoftext|>User: How?\nAssistant:",
    "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST] Hi. </s><s>[INST] How? [/INST]",
    "<|endoftext|><|endoftext|>a<s></s>b <unk> c<|padding|>",
    "  <s>  spaced </s>\n\n<s>",
    "no special tokens at all, café 🙂",
]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "How?"},
            {"role": "assistant", "content": "Well, <|endoftext|> and </s>."}, {"role": "user", "content": "Go on."}]


@pytest.fixture(scope="module")
def tokenizer_source(preset_dir, tmp_path_factory):
    """(source folder, artifact path) for each tokenizer kind edgelm runs: tokenizers (shipped BPE folder),
    sentencepiece (the llama presets' tokenizer.model), llama.cpp's vocabulary in a GGUF of each, and the
    ggml executor's tokenizer stored in a TokenFormer GGUF."""
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    root = tmp_path_factory.mktemp("special")
    made = {}

    def get(kind):
        if kind not in made:
            folder = {"bpe": SHIPPED / "tiny-rope", "sentencepiece": preset_dir("tiny-rope"),
                      "llama.cpp-bpe": SHIPPED / "tiny-rope", "llama.cpp-sentencepiece": preset_dir("tiny-rope"),
                      "ggml-executor": preset_dir("tiny-tokenformer")}[kind]
            path = folder
            if kind.startswith("llama.cpp") or kind == "ggml-executor":
                path = export_gguf(open_checkpoint(folder), root / f"{kind}.gguf", "f16").path
            made[kind] = folder, path
        return made[kind]

    return get


KINDS = ["bpe", "sentencepiece", "llama.cpp-bpe", "llama.cpp-sentencepiece", "ggml-executor"]
ENGINES = {"bpe": "torch", "sentencepiece": "torch", "llama.cpp-bpe": "llama.cpp", "llama.cpp-sentencepiece": "llama.cpp",
           "ggml-executor": "edgelm ggml executor"}


@pytest.mark.parametrize("kind", KINDS)
def test_special_token_text_is_parsed_as_transformers_parses_it(tokenizer_source, kind):
    from transformers import AutoTokenizer

    folder, path = tokenizer_source(kind)
    reference = AutoTokenizer.from_pretrained(folder)
    with open_artifact(path, LoadOptions(context_length=256, threads=2)) as artifact:
        assert artifact.engine.startswith(ENGINES[kind])
        tokenizer = artifact.tokenizer
        for text in TEXTS:
            parsed = reference(text, add_special_tokens=False)["input_ids"]
            spelled = reference(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            assert tokenizer.encode(text, add_bos=False, special=True) == parsed, text
            assert tokenizer.encode(text, add_bos=False, special=False) == spelled, text
        eos_text = tokenizer.config["eos_token"]
        assert tokenizer.encode(eos_text, add_bos=False) == [tokenizer.eos_id]  # special=True is the default
        assert len(tokenizer.encode(eos_text, add_bos=False, special=False)) > 1


@pytest.mark.parametrize("kind", KINDS)
def test_every_chat_turn_is_transformers_apply_chat_template(tokenizer_source, kind):
    """Turn by turn, with the model's own template: the BPE `User:` one with {{ eos_token }} after each
    reply, and the SentencePiece `[INST]` one that prints {{ bos_token }} itself while its config also
    says add_bos_token: exactly the bos tokens transformers gives (one per user turn), none added."""
    from transformers import AutoTokenizer

    folder, path = tokenizer_source(kind)
    reference = AutoTokenizer.from_pretrained(folder)
    with open_artifact(path, LoadOptions(context_length=512, threads=2)) as artifact:
        conversation = Conversation(artifact.tokenizer, 512, 16, system=MESSAGES[0]["content"])
        for turn in range(1, len(MESSAGES), 2):
            ids, dropped = conversation.prompt_ids(MESSAGES[turn]["content"])
            expected = reference.apply_chat_template(MESSAGES[: turn + 1], tokenize=True, add_generation_prompt=True)
            assert dropped == 0 and ids == list(expected), f"turn {turn // 2 + 1}"
            if turn + 1 < len(MESSAGES):
                conversation.add_reply(MESSAGES[turn + 1]["content"])
        bos = artifact.tokenizer.bos_id
        if "bos_token" in (artifact.tokenizer.chat_template or ""):
            assert ids.count(bos) == 3 and [bos, bos] not in [ids[i:i + 2] for i in range(len(ids))]  # one per user turn


@pytest.mark.parametrize("config", [
    {"additional_special_tokens": "abc"},  # a string, not a list: not three one-letter special tokens
    {"added_tokens_decoder": ["<s>"]},
    {"added_tokens_decoder": {"5": {"content": "", "special": True}}},  # an empty text matches nowhere
])
def test_a_strange_tokenizer_config_changes_nothing_of_sentencepiece(preset_dir, config):
    import json

    from edgelm.tokenizer import load_tokenizer_file

    folder = preset_dir("tiny-rope")
    base = json.loads((folder / "tokenizer_config.json").read_text())
    plain = load_tokenizer_file(folder / "tokenizer.model", base)
    strange = load_tokenizer_file(folder / "tokenizer.model", {**base, **config})
    for text in TEXTS + ["a b c abc"]:
        assert strange.encode(text, special=True) == plain.encode(text, special=True), text


def test_verbose_prompt_spells_a_control_token_on_a_gguf_as_in_the_folder(tmp_path):
    """Stranger finding: `chat --verbose-prompt` on a GGUF showed `1 -> ''` where the folder and ONNX show
    `1 -> '<|im_start|>'`: llama.cpp renders a control token as nothing unless asked to."""
    from pathlib import Path

    import edgelm
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    folder = Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-nope"
    gguf = export_gguf(open_checkpoint(folder), tmp_path / "m.gguf", "f16", certificate=False).path
    shown = [edgelm.load(path).tokenizer for path in (folder, gguf)]
    eos = shown[0].eos_id
    assert shown[1].decode([eos]) == ""  # what the prompt listing printed before
    assert shown[0].token_text(eos) == shown[1].token_text(eos) == "<|endoftext|>"
