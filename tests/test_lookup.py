"""Prompt-lookup decoding (runtime/generate.py): tokens drafted from n-grams of the conversation and
verified in one multi-token forward give greedy output identical to plain decoding, for every backend,
through a chat's prefix reuse and a stop string; the verify step's rows are the logits decoding computes;
with sampling, the acceptance rule leaves each token distributed as the model's distribution says."""

import json
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
from edgelm.runtime.generate import NgramLookup, generate_from_ids
from edgelm.runtime.sampling import Sampler, SamplingOptions

# (model, format, largest |logit difference|) per backend: the verify step's rows against single-token
# decoding are the same kernels over a different batch split, as test_kv_reuse.py's prefix reuse is
from .test_kv_reuse import BACKENDS

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "examples" / "models"
PASSAGE = " ".join((REPO / "examples" / "data" / "persuasion.txt").read_text(encoding="utf-8").split()[3000:3060])
USER = [f"Repeat this passage word for word:\n\n{PASSAGE}", "Why did Anne refuse him?", "And what of Captain Wentworth?"]
CONTEXT, REPLY = 384, 32

@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory):
    made = {}

    def make(name: str, fmt: str | None) -> Path:
        if fmt is None:
            return MODELS / name
        if (name, fmt) not in made:
            out = tmp_path_factory.mktemp(f"{name}-{fmt}")
            if fmt == "gguf":
                made[name, fmt] = export_gguf(open_checkpoint(MODELS / name), out / "m.gguf", "f16").path
            elif fmt == "onnx":
                made[name, fmt] = export_onnx(open_checkpoint(MODELS / name), out / "onnx").path
            else:  # Optimum's own exporter: no genai_config.json, a past that grows
                folder = out / "optimum"
                subprocess.run([sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(MODELS / name),
                                "--task", "text-generation-with-past", str(folder)], check=True, capture_output=True, text=True)
                made[name, fmt] = folder
        return made[name, fmt]

    return make


def open_backend(path: Path):
    return open_artifact(path, LoadOptions(context_length=CONTEXT, threads=2))  # llama.cpp as chat opens it: last logits only


def chat(artifact, draft: int, stop: tuple[str, ...] = ()) -> list[list[tuple]]:
    """Each turn's pieces (token, text), the replies fed back as the chat does: every turn after the first
    reuses the cache's prefix. Drafts from single tokens too (lookup_ngram 1): many are wrong, so the
    rejection and rewind path runs as well as the taking one."""
    conversation = Conversation(artifact.tokenizer, CONTEXT, REPLY, system="You are Miss Austen.")
    turns = []
    for user in USER:
        ids, _ = conversation.prompt_ids(user)
        pieces = [(p.token, p.text) for p in generate_from_ids(artifact.backend, artifact.tokenizer, ids, REPLY, SamplingOptions(),
                                                               stop, draft, lookup_ngram=1)]
        turns.append(pieces)
        conversation.add_reply("".join(text for _, text in pieces).strip())
    return turns


@pytest.mark.parametrize("kind", list(BACKENDS))
def test_greedy_lookup_gives_plain_greedy_output(artifact_path, kind):
    name, fmt, _ = BACKENDS[kind]
    path = artifact_path(name, fmt)
    plain_artifact, lookup_artifact = open_backend(path), open_backend(path)
    plain = chat(plain_artifact, draft=0)
    lookup = chat(lookup_artifact, draft=8)
    backend = lookup_artifact.backend
    print(f"\n{kind}: {backend.accepted}/{backend.drafted} drafted tokens taken")
    assert plain_artifact.backend.drafted == 0
    assert backend.accepted > 0 and backend.drafted > backend.accepted  # drafts were taken, and some were rejected and rewound
    assert lookup == plain
    # a stop string inside the reply: the same text before it, and the next turn reuses a cache cut there
    text = "".join(t for _, t in plain[0])
    stop = (text[len(text) // 2:len(text) // 2 + 5],)
    assert stop[0].strip()
    plain, lookup = chat(plain_artifact, 0, stop), chat(lookup_artifact, 8, stop)
    assert lookup == plain
    assert "".join(t for _, t in lookup[0]) == text[:text.index(stop[0])]
    plain_artifact.close()
    lookup_artifact.close()


VERIFY_TOLERANCE = {"llama.cpp": 5e-3}


@pytest.mark.parametrize("kind", list(BACKENDS))
def test_the_verify_step_gives_the_logits_of_decoding(artifact_path, kind):
    """Row i of one forward over a token and its drafts is what decoding computes after the token and the
    first i drafts: the rows speculative decoding compares against."""
    name, fmt, tolerance = BACKENDS[kind]
    # llama.cpp computes a batch of rows with other kernels than one row (and an f16 KV cache): 0 when this
    # test runs alone, 2.6e-3 measured inside the full suite; the greedy-equality tests above are what bind
    tolerance = VERIFY_TOLERANCE.get(kind, tolerance)
    artifact = open_backend(artifact_path(name, fmt))
    backend = artifact.backend
    ids = artifact.tokenizer.encode(PASSAGE)
    prompt, drafts = ids[:40], ids[40:48]
    backend.prefill(prompt)
    rows = backend.forward(drafts)
    assert rows.shape[0] == len(drafts) and backend.cached_ids == prompt + drafts
    backend.rewind(len(prompt) + 3)  # three taken, the rest rejected
    stepped = [backend.decode(token) for token in drafts[3:]]
    assert backend.cached_ids == prompt + drafts
    backend.rewind(len(prompt))
    stepped = [backend.decode(token) for token in drafts[:3]] + stepped
    worst = max(float(np.abs(row - step).max()) for row, step in zip(rows, stepped))
    print(f"\n{kind}: largest |Δ logit| verify rows vs decode {worst:.2e} (tolerance {tolerance:g})")
    assert worst <= tolerance
    artifact.close()


def test_sampled_tokens_keep_the_model_distribution():
    """With a temperature, a draft of one token is accepted with probability p(guess), else a token is drawn
    from p without it: the token taken is distributed as p, whatever the guess. 40,000 draws per guess,
    each probability within 5 standard errors (about 1e-6 to fail by chance)."""
    logits = np.array([2.0, 1.0, 0.5, -1.0, 0.0, 1.5], dtype=np.float32)
    options = SamplingOptions(temperature=0.8, top_k=5, seed=1)
    p = Sampler(options).distribution(logits)
    draws = 40_000
    for guess in (0, 2, 3):  # the likeliest token, a middling one, one top_k removed (p = 0: never taken)
        sampler = Sampler(options)
        counts = np.bincount([sampler.verify(logits, [], guess) for _ in range(draws)], minlength=p.size) / draws
        error = np.sqrt(p * (1 - p) / draws)
        assert np.all(np.abs(counts - p) <= 5 * error + 1e-12), (guess, counts, p)


def test_sampled_lookup_is_reproducible_with_a_seed(artifact_path):
    artifact = open_backend(artifact_path("tiny-nope", "onnx"))
    ids = artifact.tokenizer.encode(PASSAGE + "\n\n" + PASSAGE[:60])
    options = SamplingOptions(temperature=0.3, top_k=40, top_p=0.95, seed=7)  # cool enough that drafts are taken
    runs = [[p.token for p in generate_from_ids(artifact.backend, artifact.tokenizer, ids, 48, options, draft=8)] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 48
    assert artifact.backend.accepted > 0
    artifact.close()


def test_ngram_lookup_drafts_what_followed_the_latest_match():
    lookup = NgramLookup([5, 1, 2, 3, 9, 1, 2, 4, 7, 8, 1, 2], longest=3)
    assert lookup.draft(3) == [4, 7, 8]  # "1 2" last continued with 4 (the 3-gram "8 1 2" never occurred)
    lookup.add(4)
    assert lookup.draft(2) == [7, 8]  # the 3-gram "1 2 4" now matches
    assert NgramLookup([1, 2, 3], 3).draft(4) == []  # nothing repeats
    assert NgramLookup([7, 7, 7], 2).draft(5) == [7]  # the draft ends where the sequence does
    assert lookup.draft(0) == []
    assert NgramLookup([5, 1, 2, 9, 2], longest=3, shortest=2).draft(3) == []  # only "2" recurs: too short a match


def test_cli_draft_option_changes_no_greedy_token(run_cli, artifact_path):
    path = artifact_path("tiny-rope", "gguf")
    outputs = []
    for draft in ("0", "8"):
        code, out, err = run_cli("generate", path, "--prompt", PASSAGE + "\n\n" + PASSAGE[:40], "--max-new-tokens", "24",
                                 "--draft", draft, "--lookup-ngram", "2", "--json")
        assert code == 0, err
        outputs.append(json.loads(out)["tokens"])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 24
    # the n-gram index holds a table per length: 10^11 ran out of memory; past the bound is one line
    code, _, err = run_cli("generate", path, "--prompt", "x", "--draft", "4", "--lookup-ngram", "99999999999")
    assert code == 2 and "--lookup-ngram" in err and "1<=x<=16" in err and "Traceback" not in err, err


def test_python_api_takes_draft(artifact_path):
    import edgelm

    model = edgelm.load(artifact_path("tiny-nope", "onnx"), context_length=CONTEXT)
    prompt = PASSAGE + "\n\n" + PASSAGE[:40]
    assert model.generate(prompt, 24, draft=0) == model.generate(prompt, 24, draft=6, lookup_ngram=2)
    with pytest.raises(ValueError, match="^draft must be a whole number from 0, not -1$"):
        model.generate(prompt, 4, draft=-1)
    for wrong in (0, 17):  # each option named alone (stranger 21: lookup_ngram=0 said "not 0 and 0")
        with pytest.raises(ValueError, match=f"^lookup_ngram must be a whole number from 1 to 16, not {wrong}$"):
            model.generate(prompt, 4, draft=4, lookup_ngram=wrong)
    model.artifact.close()
