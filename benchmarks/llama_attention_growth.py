"""What a chat turn's prefill costs deeper in the context, for llama.cpp's cache settings: llama-cpp-python
evaluates the same 100 tokens after 200 and after 1,900 positions, with the default f16 cache, flash
attention, a q8_0 cache (flash attention: llama.cpp quantizes V only with it) and an f32 cache; the
settings interleaved, each repetition reusing the cache up to the position.

    python benchmarks/llama_attention_growth.py FILE.gguf [--repeats 3] [--threads 2]

Prints each setting's times and the median ratio @1900 ÷ @200 (issue 26's turn 20 ÷ turn 2).
"""

from __future__ import annotations

import argparse
import random
import time
from statistics import median

GGML_TYPE_F32, GGML_TYPE_Q8_0 = 0, 8
SETTINGS = {
    "f16 (default)": {},
    "flash attention": {"flash_attn": True},
    "flash attention, q8_0 cache": {"flash_attn": True, "type_k": GGML_TYPE_Q8_0, "type_v": GGML_TYPE_Q8_0},
    "f32 cache": {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32},
    "flash attention, f32 cache": {"flash_attn": True, "type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32},
}
POSITIONS, NEW = (200, 1900), 100


def timed_prefill(llm, ids: list[int], position: int) -> float:
    """Seconds to evaluate ids[position:position + NEW] with the cache holding ids[:position]."""
    import llama_cpp

    if llm.n_tokens > position:
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), -1, position, -1)
        llm.n_tokens = position
    else:
        llm.eval(ids[llm.n_tokens:position])
    start = time.perf_counter()
    llm.eval(ids[position:position + NEW])
    return time.perf_counter() - start


def main() -> None:
    from llama_cpp import Llama

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    engines = {name: Llama(model_path=args.gguf, n_ctx=2048, n_batch=512, n_threads=args.threads, n_threads_batch=args.threads,
                           verbose=False, **extra) for name, extra in SETTINGS.items()}
    ids = random.Random(0).choices(range(100, 30000), k=POSITIONS[-1] + NEW)
    times = {(name, p): [] for name in SETTINGS for p in POSITIONS}
    for _ in range(args.repeats):
        for position in POSITIONS:
            for name, llm in engines.items():
                times[name, position].append(timed_prefill(llm, ids, position))
    print(f"| cache setting | @{POSITIONS[0]} s | @{POSITIONS[1]} s | median ratio |\n|---|---|---|---:|")
    for name in SETTINGS:
        low, high = times[name, POSITIONS[0]], times[name, POSITIONS[1]]
        print(f"| {name} | {', '.join(f'{t:.3f}' for t in sorted(low))} | {', '.join(f'{t:.3f}' for t in sorted(high))} | "
              f"{median(high) / median(low):.2f} |")


if __name__ == "__main__":
    main()
