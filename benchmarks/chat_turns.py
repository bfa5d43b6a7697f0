"""A chat of many turns, edgelm against the raw engine on the same file: per turn, the time to the first
token and the decode tok/s, through edgelm's chat loop (Conversation + generate_from_ids, as `edgelm chat`
runs it) and through llama-cpp-python's `create_chat_completion` (a GGUF) or onnxruntime-genai's
generator with continuous decoding (an ONNX folder: one generator for the whole chat, each turn
appending what is new), with the same user messages, the same threads, greedy, turns interleaved.

    python benchmarks/chat_turns.py ARTIFACT [--turns 20] [--new-tokens 16] [--threads 2] [--context 2048]

Prints a markdown table. Run it with PYTHONPATH at another checkout for that checkout's edgelm (its
numbers before a change): it uses only the chat loop's public functions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgelm.chat import Conversation
from edgelm.formats import LoadOptions, open_artifact
from edgelm.runtime.generate import generate_from_ids
from edgelm.runtime.sampling import SamplingOptions

TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "persuasion.txt"
SYSTEM = "You are a helpful assistant who answers questions about novels briefly."
WORDS = 45  # words of each user message (the measurement)


def user_messages(turns: int) -> list[str]:
    words = TEXT.read_text(encoding="utf-8").split()[2000:]
    return [f"What do you make of this passage? {' '.join(words[i * WORDS:(i + 1) * WORDS])}" for i in range(turns)]


def timed(tokens) -> tuple[float, float, int]:
    """(seconds to the first item of `tokens`, tok/s of the rest, items) for an iterator of tokens."""
    start = time.perf_counter()
    first = last = None
    count = 0
    for _ in tokens:
        last = time.perf_counter()
        first = first or last
        count += 1
    if not count:
        return time.perf_counter() - start, 0.0, 0
    return first - start, (count - 1) / (last - first) if count > 1 else 0.0, count


class Edgelm:
    name = "edgelm"

    def __init__(self, path: Path, threads: int, context: int, new_tokens: int):
        self.artifact = open_artifact(path, LoadOptions(context_length=context, threads=threads))
        self.conversation = Conversation(self.artifact.tokenizer, context, new_tokens, SYSTEM)
        self.new_tokens = new_tokens
        self.prompt_tokens = self.evaluated = 0

    def turn(self, user: str) -> tuple[float, float, int]:
        ids, _ = self.conversation.prompt_ids(user)
        backend = self.artifact.backend
        self.prompt_tokens, before = len(ids), getattr(backend, "evaluated", 0)
        rejected_before = getattr(backend, "drafted", 0) - getattr(backend, "accepted", 0)
        reply = []
        pieces = (reply.append(p.text) for p in generate_from_ids(self.artifact.backend, self.artifact.tokenizer, ids,
                                                                  self.new_tokens, SamplingOptions()))
        result = timed(pieces)
        # prompt tokens run through the model (not the decode steps: one after each token but the last, or
        # after the last where eos ended the reply, nor the drafts prompt lookup verified and rejected); all of
        # them where the backend keeps no count (before reuse)
        decode_steps = result[2] - (result[2] == self.new_tokens)
        decode_steps += getattr(backend, "drafted", 0) - getattr(backend, "accepted", 0) - rejected_before
        self.evaluated = backend.evaluated - before - decode_steps if hasattr(backend, "evaluated") else len(ids)
        self.conversation.add_reply("".join(reply).strip())
        return result


class LlamaCppPython:
    name = "llama-cpp-python"

    def __init__(self, path: Path, threads: int, context: int, new_tokens: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=context, n_batch=512, n_threads=threads, verbose=False)
        self.messages = [{"role": "system", "content": SYSTEM}]
        self.new_tokens = new_tokens

    def turn(self, user: str) -> tuple[float, float, int]:
        self.messages.append({"role": "user", "content": user})
        reply = []
        chunks = self.llm.create_chat_completion(self.messages, max_tokens=self.new_tokens, temperature=0.0, stream=True)
        result = timed(reply.append(c["choices"][0]["delta"].get("content", "")) for c in chunks
                       if c["choices"][0]["delta"].get("content"))
        self.messages.append({"role": "assistant", "content": "".join(reply).strip()})
        return result


class GenaiGenerator:
    """onnxruntime-genai's continuous decoding: one generator for the chat; each turn appends the tokens
    the conversation adds after what the generator holds (rewinding to the common prefix first)."""

    name = "onnxruntime-genai"

    def __init__(self, path: Path, threads: int, context: int, new_tokens: int):
        import onnxruntime_genai as og

        config = og.Config(str(path))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=context, do_sample=False)
        self.generator = og.Generator(self.model, params)
        self.conversation = Conversation(open_artifact(path, LoadOptions(context_length=context, threads=1)).tokenizer,
                                         context, new_tokens, SYSTEM)  # the same template, rendered as edgelm renders it
        self.new_tokens = new_tokens

    def turn(self, user: str) -> tuple[float, float, int]:
        self.conversation.turns.append({"role": "user", "content": user})
        ids = list(self.tokenizer.encode(self.conversation.render(self.conversation.turns)))
        held = list(self.generator.get_sequence(0))
        common = next((i for i, (a, b) in enumerate(zip(held, ids)) if a != b), min(len(held), len(ids)))
        common = min(common, len(ids) - 1)
        reply: list[int] = []

        def tokens():
            if common < len(held):
                self.generator.rewind_to(common)
            self.generator.append_tokens([ids[common:]])
            while len(reply) < self.new_tokens and not self.generator.is_done():
                self.generator.generate_next_token()
                reply.append(int(self.generator.get_next_tokens()[0]))
                yield reply[-1]

        result = timed(tokens())
        self.conversation.add_reply(self.tokenizer.decode(reply).strip())
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="a .gguf file or an ONNX folder")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=2048)
    args = parser.parse_args()
    raw = LlamaCppPython if args.artifact.suffix == ".gguf" else GenaiGenerator
    engines = [engine(args.artifact, args.threads, args.context, args.new_tokens) for engine in (Edgelm, raw)]
    print(f"{args.artifact.name}, {args.threads} threads, {args.new_tokens} new tokens a turn, greedy")
    print(f"| turn | prompt tokens | edgelm evaluates | edgelm first token | {raw.name} | ratio | edgelm decode tok/s | {raw.name} |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    raw_full = None
    for number, user in enumerate(user_messages(args.turns), 1):
        first, rate, _ = engines[0].turn(user)  # interleaved, turn by turn
        if raw_full is None:
            try:
                raw_first, raw_rate, _ = engines[1].turn(user)
            except (ValueError, RuntimeError) as exc:  # the raw engines drop nothing: "exceed(s) context window / max length"
                raw_full = str(exc)
        if raw_full is not None:  # a chat the raw engine cannot go on with
            print(f"| {number} | {engines[0].prompt_tokens} | {engines[0].evaluated} | {first:.3f} s | context full | – | {rate:.1f} | – |",
                  flush=True)
            continue
        print(f"| {number} | {engines[0].prompt_tokens} | {engines[0].evaluated} | {first:.3f} s | {raw_first:.3f} s | {first / raw_first:.2f} | "
              f"{rate:.1f} | {raw_rate:.1f} |", flush=True)
    if raw_full is not None:
        print(f"\n{raw.name} stopped with a full context: {raw_full}")

if __name__ == "__main__":
    main()
