"""Prefix reuse across chat turns (runtime/backend.py `prefill`) and incremental detokenization
(runtime/generate.py `TextStream`): a turn evaluates only the tokens its prompt does not share with the
cache, and the logits after the reused prefix are those of a full prefill of the same prompt, for every
backend, across a context-full drop of the oldest exchange; the streamed text is the full decode's."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelm.chat import Conversation
from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.formats import LoadOptions, open_artifact
from edgelm.models import open_checkpoint
from edgelm.runtime.generate import TextStream, generate_from_ids
from edgelm.runtime.sampling import SamplingOptions
from edgelm.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "examples" / "models"
TOKENIZERS = REPO / "edgelm" / "assets" / "tokenizers"
CONTEXT = 160  # small enough that the chat below drops its oldest exchanges
REPLY = 12
USER = ["Good morning, how do you do?", "Tell me about Anne Elliot and her father.", "Why did she refuse him?",
        "What happened at Lyme?", "And Captain Wentworth?", "Was Lady Russell right?", "How does the story end?"]

# (model, format) per backend, and the largest |logit difference| allowed between a reused prefix and a
# full prefill of the same prompt: the same kernels over different batch splits. Measured: torch and
# onnxruntime (fp32) 2.9e-6 and 3.8e-6, llama.cpp 0, the ggml executor (F16 matrices and cache) 1.6e-3.
BACKENDS = {
    "torch": ("tiny-nope", None, 1e-4),
    "llama.cpp": ("tiny-rope", "gguf", 1e-3),
    "onnx shared buffer": ("tiny-nope", "onnx", 1e-4),
    "onnx growing past (Optimum)": ("tiny-rope", "optimum", 1e-4),
    "ggml executor (tokenformer)": ("tiny-tokenformer", "gguf", 5e-3),
}
KINDS = list(BACKENDS)


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory):
    def make(name: str, fmt: str | None) -> Path:
        out = tmp_path_factory.mktemp(f"{name}-{fmt}")
        if fmt is None:
            return MODELS / name
        if fmt == "gguf":
            return export_gguf(open_checkpoint(MODELS / name), out / "m.gguf", "f16").path
        if fmt == "onnx":
            return export_onnx(open_checkpoint(MODELS / name), out / "onnx").path
        folder = out / "optimum"  # Optimum's own exporter: no genai_config.json, a past that grows
        subprocess.run([sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(MODELS / name),
                        "--task", "text-generation-with-past", str(folder)], check=True, capture_output=True, text=True)
        return folder

    return make


def open_backend(path: Path):
    return open_artifact(path, LoadOptions(context_length=CONTEXT, threads=2))


def shared_prefix(cached: list[int], ids: list[int]) -> int:
    n = 0
    while n < min(len(cached), len(ids) - 1) and cached[n] == ids[n]:
        n += 1
    return n


@pytest.mark.parametrize("kind", KINDS)
def test_reused_prefix_gives_the_logits_of_a_full_prefill(artifact_path, kind):
    name, fmt, tolerance = BACKENDS[kind]
    path = artifact_path(name, fmt)
    chatting, fresh = open_backend(path), open_backend(path)
    backend, tokenizer = chatting.backend, chatting.tokenizer
    conversation = Conversation(tokenizer, CONTEXT, REPLY, system="You are Miss Austen, and you answer briefly.")
    worst, drops, reused = 0.0, 0, []
    for user in USER:
        ids, dropped = conversation.prompt_ids(user)
        drops += dropped
        shared = shared_prefix(backend.cached_ids, ids)
        before = backend.evaluated
        logits = backend.prefill(ids)
        assert backend.evaluated - before == len(ids) - shared  # only what the cache did not hold
        assert backend.cached_ids == ids
        fresh.backend.reset()
        expected = fresh.backend.prefill(ids)
        assert fresh.backend.evaluated >= len(ids)
        worst = max(worst, float(np.abs(logits - expected).max()))
        assert int(np.argmax(logits)) == int(np.argmax(expected))
        reused.append(shared)
        reply = []
        for _ in range(REPLY):  # greedy, as generate does, through the same cache
            reply.append(int(np.argmax(logits)))
            logits = backend.decode(reply[-1])
        conversation.add_reply(tokenizer.decode(reply).strip())
    print(f"\n{kind}: largest |Δ logit| {worst:.2e} (tolerance {tolerance:g}); tokens reused per turn {reused}; {drops} exchanges dropped")
    assert worst <= tolerance
    assert drops >= 1  # the context filled up and the oldest exchanges went
    system = shared_prefix(tokenizer.encode(conversation.render([]), add_bos=False), conversation.prompt_ids("Hello")[0])
    assert system > 5 and all(shared >= system for shared in reused[1:])  # every later turn kept at least the system prompt
    chatting.backend.close()
    fresh.backend.close()


@pytest.mark.parametrize("kind", ["torch", "llama.cpp", "onnx shared buffer"])
def test_each_turn_evaluates_only_its_new_tokens(artifact_path, kind):
    """Through generate, as `chat` and the Python API run it: the turn's new prompt tokens, then one
    token per step; a reset (or a changed system prompt) shares nothing past the template's start."""
    name, fmt, _ = BACKENDS[kind]
    artifact = open_backend(artifact_path(name, fmt))
    backend, tokenizer = artifact.backend, artifact.tokenizer
    conversation = Conversation(tokenizer, CONTEXT, REPLY, system="Be brief.")
    for user in USER[:3]:
        ids, dropped = conversation.prompt_ids(user)
        assert not dropped
        shared, before = shared_prefix(backend.cached_ids, ids), backend.evaluated
        pieces = list(generate_from_ids(backend, tokenizer, ids, REPLY, SamplingOptions(), draft=0))  # one token a step
        decode_steps = len(pieces) - (len(pieces) == REPLY)  # no step after the last token, nor for eos
        assert backend.evaluated - before == len(ids) - shared + decode_steps
        assert backend.cached_ids[: len(ids)] == ids
        conversation.add_reply("".join(p.text for p in pieces).strip())
    for change in (conversation.reset, lambda: setattr(conversation, "system", "Be verbose.")):  # /reset; another system prompt
        change()
        ids, _ = conversation.prompt_ids("Hello")
        shared, before = shared_prefix(backend.cached_ids, ids), backend.evaluated
        # at most the template's opening: the system prompt's turn and what precedes any user text
        opening = shared_prefix(*(tokenizer.encode(conversation.render([{"role": "user", "content": text}]), add_bos=False)
                                  for text in ("Xylophone", "Quartz")))
        assert shared <= opening
        backend.prefill(ids)
        assert backend.evaluated - before == len(ids) - shared and backend.cached_ids == ids


def test_a_whole_cached_prompt_evaluates_its_last_token(artifact_path):
    """Logits are not kept: a prompt the cache holds entirely is rewound by one token, as llama-cpp-python's
    `generate` does."""
    name, fmt, _ = BACKENDS["torch"]
    backend = open_backend(artifact_path(name, fmt)).backend
    ids = list(range(10, 40))
    first = backend.prefill(ids)
    before = backend.evaluated
    again = backend.prefill(ids)
    assert backend.evaluated - before == 1 and backend.cached_ids == ids
    assert np.abs(first - again).max() <= 1e-4
    shorter = backend.prefill(ids[:20])  # a prompt the cache holds more than
    assert backend.cached_ids == ids[:20] and backend.evaluated - before == 2
    backend.reset()
    assert np.abs(shorter - backend.prefill(ids[:20])).max() <= 1e-4


# Streamed text against the full decode, for every tokenizer kind: text with multi-byte characters split
# across byte tokens, leading spaces (SentencePiece's ▁), and random ids (partial characters included).
TEXTS = ["café naïve — “quoted”", "日本語のテキスト and 🙂👍🏽 then ZWJ 👨‍👩‍👧", "  two  spaces\tand tab", "\n\nnew lines\n", "Ελληνικά Русский"]


def tokenizers(tmp_path, preset_dir):
    yield load_tokenizer(TOKENIZERS / "bpe")
    yield load_tokenizer(TOKENIZERS / "sentencepiece")
    for i, folder in enumerate((MODELS / "tiny-rope", preset_dir("tiny-rope"))):  # llama.cpp's own BPE and SentencePiece vocabularies
        yield open_artifact(export_gguf(open_checkpoint(folder), tmp_path / f"{i}.gguf", "f16").path,
                            LoadOptions(context_length=64, threads=1)).tokenizer


def streamed(tokenizer, prompt: list[int], produced: list[int]) -> str:
    stream = TextStream(tokenizer, prompt)
    return "".join(stream.add(token) for token in produced)


def test_streamed_text_is_the_full_decode(tmp_path, preset_dir):
    kinds, spaced, rng = [], [], random.Random(0)
    for tokenizer in tokenizers(tmp_path, preset_dir):
        kinds.append(tokenizer.kind)
        prompt = tokenizer.encode("User: say something\nAssistant:")
        cases = [tokenizer.encode(text, add_bos=False) for text in TEXTS]
        cases += [tokenizer.encode(" ".join(TEXTS), add_bos=False)]
        cases += [[rng.randrange(tokenizer.vocab_size) for _ in range(40)] for _ in range(20)]
        for produced in cases:  # a reply's text leaves control tokens out (Tokenizer.is_control); the rest is decode's
            full = tokenizer.decode(prompt + [token for token in produced if not tokenizer.is_control(token)])
            expected = full[len(tokenizer.decode(prompt)):]
            text = streamed(tokenizer, prompt, produced)
            if full.endswith("\ufffd"):  # a character still open at the end: held back
                assert expected.startswith(text)
            else:
                assert text == expected, (tokenizer.kind, produced)
        hello = tokenizer.encode("Hello", add_bos=False)
        alone, after = tokenizer.decode(hello), streamed(tokenizer, prompt, hello)
        if alone != after:  # SentencePiece: the dummy prefix (▁Hello) a decode alone drops is kept after the prompt
            assert after == " " + alone
            spaced.append(tokenizer.kind)
    assert len(set(kinds)) == 3 and len(kinds) == 4 and spaced == ["sentencepiece (tokenizer.model)"]  # llama.cpp keeps the space alone too


def test_python_api_reuses_the_previous_prompt():
    """`edgelm.load(...).generate` twice: the second prompt extends the first, and the same text comes out
    as from a fresh model."""
    import edgelm

    model, fresh = edgelm.load(MODELS / "tiny-rope"), edgelm.load(MODELS / "tiny-rope")
    first, longer = "It is a truth", "It is a truth universally acknowledged, that a single man"
    model.generate(first, max_new_tokens=4)
    backend, before = model.artifact.backend, model.artifact.backend.evaluated
    text = model.generate(longer, max_new_tokens=8)
    assert backend.evaluated - before == len(model.tokenizer.encode(longer)) - len(model.tokenizer.encode(first)) + 7
    assert text == fresh.generate(longer, max_new_tokens=8)


def _linear_drops(conversation: Conversation, user: str) -> tuple[list[int], int]:
    """The drop rule as it was written before bisection, one exchange at a time: the reference for prompt_ids."""
    turns = [*conversation.turns, {"role": "user", "content": user}]
    room = whole = conversation.context_length - conversation.reply_budget
    dropped = 0
    while True:
        ids = conversation.tokenizer.encode(conversation.render(turns), add_bos=False, special=True)
        if len(ids) <= room or len(turns) <= 1 and len(ids) <= whole:
            return ids, dropped
        assert len(turns) > 1, "the message alone does not fit"
        room = whole // 2
        turns = turns[2:] if len(turns) > 2 else turns[1:]
        dropped += 1


def test_dropping_old_exchanges_renders_a_few_times_and_drops_as_one_at_a_time_did():
    """Stranger 40: prompt_ids dropped one exchange at a time, rendering and encoding the rest after each: 13.7 s for a
    history of 400 exchanges, paid on every Python-API call once the context was full. The fewest drops that fit are
    found by bisection now: the same ids and count as one at a time, for histories of 1 to 120 exchanges of changing
    lengths, in at most 2 + log2(exchanges) renders."""
    rng = random.Random(0)
    tokenizer = load_tokenizer(MODELS / "tiny-rope")
    for exchanges in (0, 1, 2, 3, 7, 30, 120):
        history = []
        for i in range(exchanges):
            history += [{"role": "user", "content": "word " * rng.randint(1, 60)},
                        {"role": "assistant", "content": "reply " * rng.randint(1, 60)}]
        for message in ("Hello.", "long " * 150):
            conversation = Conversation(tokenizer, context_length=512, reply_budget=64)
            conversation.turns = list(history)
            expected = _linear_drops(conversation, message)
            renders = []
            render = conversation.render
            conversation.render = lambda turns: renders.append(len(turns)) or render(turns)
            assert conversation.prompt_ids(message) == expected, (exchanges, len(message))
            assert len(renders) <= 2 + max(exchanges, 1).bit_length(), (exchanges, len(renders))


def test_python_api_chat_keeps_what_it_dropped_so_later_turns_reuse_the_cache():
    """Stranger 40: once the context was full, every model.chat(messages) dropped old exchanges afresh down to half the
    room, so the kept window moved each call and each re-evaluated its whole prompt, where `edgelm chat` drops once and
    then evaluates only each turn's new tokens. A call whose history goes on from the last call's now drops what that
    call dropped. 24 turns in a 256-token context, each ~28 new prompt tokens and a 24-token reply (~52 evaluated):
    a call evaluating over 75 tokens is one that dropped: 7 of 24 now (every third, as the half room allows), 19 before."""
    import edgelm

    model = edgelm.load(MODELS / "tiny-rope", context_length=256)
    backend = model.artifact.backend
    messages, evaluated = [], []
    for i in range(24):
        messages.append({"role": "user", "content": f"Tell me about the {i}th letter, briefly and kindly."})
        before = backend.evaluated
        reply = model.chat(messages, max_new_tokens=24)
        evaluated.append(backend.evaluated - before)
        messages.append({"role": "assistant", "content": reply})
    assert max(evaluated) > 75 and sum(e > 75 for e in evaluated) <= 10, evaluated
