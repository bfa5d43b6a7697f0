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
            expected = reference.apply_chat_template(MESSAGES[: turn + 1], tokenize=True, add_generation_prompt=True, return_dict=False)
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
    assert shown[0].token_text(eos) == shown[1].token_text(eos) == "<|endoftext|>"


@pytest.mark.parametrize("kind", KINDS)
def test_decode_keeps_special_tokens_and_a_reply_shows_none(tokenizer_source, kind):
    """Stranger finding: a reply's special tokens (Qwen3's <think> where marked special) vanished from the text on a
    GGUF alone (llama.cpp's detokenize leaves them out unless asked), and sentencepiece's decode leaves out control
    tokens too. Every tokenizer kind decodes as transformers' decode (skip_special_tokens=False, its default).
    Stranger 55: a control token a model generated mid-reply (Llama 3.2's <|begin_of_text|>) was printed as its text in
    the reply, and went back into the chat's history as that token. A reply's text leaves special tokens out, as
    transformers' text-generation pipeline decodes (skip_special_tokens=True), as llama-server and edgelm's web page
    show it; the tokens are still produced (Piece.token)."""
    from transformers import AutoTokenizer

    from edgelm.runtime.generate import _stream

    folder, path = tokenizer_source(kind)
    reference = AutoTokenizer.from_pretrained(folder)
    with open_artifact(path, LoadOptions(context_length=256, threads=2)) as artifact:
        tokenizer = artifact.tokenizer
        for text in TEXTS:
            ids = reference(text, add_special_tokens=False)["input_ids"]
            decoded = tokenizer.decode(ids)
            if kind == "llama.cpp-sentencepiece":  # llama-cpp-python strips the first piece's '▁' space only after a bos
                decoded = decoded.removeprefix(" ")
            assert decoded == reference.decode(ids), text

            controls = [i for i in ids if i in reference.all_special_ids]
            assert all(map(tokenizer.is_control, controls)) and not any(tokenizer.is_control(i) for i in ids if i not in controls)
            reply = [i for i in ids if not tokenizer.ends_reply(i)]  # the text of a reply the model went on past
            pieces = list(_stream(tokenizer, reference("Hello", add_special_tokens=False)["input_ids"], iter(reply), ()))
            shown = "".join(piece.text for piece in pieces)
            expected = reference.decode(reply, skip_special_tokens=True)
            if kind.endswith("sentencepiece"):  # a text's first space: decoded alone it is stripped, after "Hello" kept
                shown, expected = shown.lstrip(" "), expected.lstrip(" ")
            assert shown == expected, text
            assert [piece.token for piece in pieces if piece.token is not None] == reply


BPE_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|endoftext|>",
                "<|im_start|>", "<|im_end|>"]
LLAMA3_TOKENIZER_CONFIG = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast"}
QWEN_TOKENIZER_CONFIG = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer"}


def write_bpe_folder(folder: Path, post_processor: bool, tokenizer_config: dict, config_class: str = "LlamaConfig", **config) -> Path:
    """A folder shaped as Llama 3.x and Qwen2.5 publish theirs: a byte-level BPE tokenizer.json (with `post_processor`,
    Llama 3.x's: ByteLevel then TemplateProcessing, single "<|begin_of_text|> $A", putting bos first), the
    tokenizer_config.json given (Llama 3.x's names bos and eos and states no add_bos_token; Qwen's names no bos), tiny
    weights by transformers' own config class, with `config` (Qwen's config.json states a bos_token_id)."""
    import json

    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=BPE_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([(SHIPPED / "tiny-rope" / "README.md").read_text()] + TEXTS, trainer)
    if post_processor:
        bos = tokenizer.token_to_id("<|begin_of_text|>")
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
    config = getattr(transformers, config_class)(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **config)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.mark.parametrize("post_processor", [True, False])
def test_bos_from_the_tokenizer_json_post_processor_as_transformers_and_llama_cpp_read_it(tmp_path, post_processor):
    """Stranger finding: a Llama 3.x folder (bos put first by tokenizer.json's post-processor, no add_bos_token in
    tokenizer_config.json) ran without bos in every format and its GGUF said add_bos_token false, where transformers'
    tokenizer(text) and llama.cpp's converter (gguf-py's SpecialVocab) add it. Prompt ids equal transformers' in the
    folder, the GGUF (llama.cpp's own tokenizer) and the ONNX export; the GGUF's add_bos is the converter's."""
    import json

    import gguf
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from edgelm.export.gguf import export_gguf
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    folder = write_bpe_folder(tmp_path / "llama3", post_processor, LLAMA3_TOKENIZER_CONFIG)
    checkpoint = open_checkpoint(folder, position_encoding="rope")
    gguf_path = export_gguf(checkpoint, tmp_path / "m.gguf", "f16", certificate=False).path
    onnx_path = export_onnx(checkpoint, tmp_path / "onnx", "f32", certificate=False).path
    add_bos = GGUFReader(gguf_path).fields["tokenizer.ggml.add_bos_token"]
    assert bool(add_bos.parts[add_bos.data[0]][0]) == gguf.SpecialVocab(folder, load_merges=False).add_special_token.get("bos", False) \
        == post_processor
    assert json.loads((onnx_path / "tokenizer_config.json").read_text()).get("add_bos_token", False) == post_processor  # the web page's key
    reference = AutoTokenizer.from_pretrained(folder)
    for path in (folder, gguf_path, onnx_path):
        options = LoadOptions(position_encoding="rope" if path == folder else None, context_length=256, threads=2)
        with open_artifact(path, options) as artifact:
            for text in TEXTS:
                assert artifact.tokenizer.encode(text) == reference(text)["input_ids"], (path.name, text)


def test_bos_id_of_a_qwen_folder_as_llama_cpp_converter_writes_it(tmp_path):
    """Stranger finding: Qwen2.5 and Qwen3 name no bos token in tokenizer_config.json yet state bos_token_id
    (<|endoftext|>) in config.json; edgelm's GGUF left it out, and llama.cpp guessed 11 (',' in Qwen's vocabulary).
    The GGUF states what gguf-py's SpecialVocab (llama.cpp's converter) reads, the ONNX configs what config.json says;
    no bos is added to a prompt, as transformers adds none."""
    import json

    import gguf
    from gguf import GGUFReader
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from edgelm.export.gguf import export_gguf
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    vocab = Tokenizer.from_file(str(write_bpe_folder(tmp_path / "probe", False, QWEN_TOKENIZER_CONFIG, "Qwen2Config") / "tokenizer.json"))
    published = vocab.token_to_id("<|endoftext|>")
    folder = write_bpe_folder(tmp_path / "qwen", False, QWEN_TOKENIZER_CONFIG, "Qwen2Config", bos_token_id=published,
                              eos_token_id=vocab.token_to_id("<|im_end|>"))
    assert json.loads((folder / "config.json").read_text())["bos_token_id"] == published
    checkpoint = open_checkpoint(folder, position_encoding="rope")
    written = GGUFReader(export_gguf(checkpoint, tmp_path / "m.gguf", "f16", certificate=False).path).fields["tokenizer.ggml.bos_token_id"]
    assert int(written.parts[written.data[0]][0]) == gguf.SpecialVocab(folder, load_merges=False).special_token_ids["bos"] == published
    onnx_path = export_onnx(checkpoint, tmp_path / "onnx", "f32", certificate=False).path
    assert json.loads((onnx_path / "config.json").read_text())["bos_token_id"] == published
    assert json.loads((onnx_path / "genai_config.json").read_text())["model"]["bos_token_id"] == published
    text = TEXTS[0]
    assert checkpoint.tokenizer().encode(text) == AutoTokenizer.from_pretrained(folder)(text)["input_ids"]  # no bos added
