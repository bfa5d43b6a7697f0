"""What one bounded chat-template render costs, in a process the size `edgelm chat` is (torch and
llama.cpp imported, a GGUF loaded): per render, the median and 90th percentile over a conversation that
grows turn by turn, with a published template (Llama 3's) and the plain default; and the in-process
render (jinja2's sandbox, no bounds on memory or time) for scale.

    python benchmarks/chat_template_render.py [--renders 60] [--gguf FILE]

Prints a markdown table. Run it with PYTHONPATH at another checkout for that checkout's edgelm (its
numbers before a change): it uses only `edgelm.chat.render_bounded`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

LLAMA_3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + "
           "'<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + "
           "content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=60)
    parser.add_argument("--gguf", help="a GGUF to load first, so the process is as large as chat's")
    args = parser.parse_args()

    import llama_cpp  # noqa: F401  (the size of the process a chat renders in)
    import torch  # noqa: F401
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from edgelm.chat import PLAIN_TEMPLATE, render_bounded

    if args.gguf:
        from edgelm.formats import LoadOptions, open_artifact

        keep = open_artifact(args.gguf, LoadOptions())  # noqa: F841
    rows = []
    for name, source in (("Llama 3", LLAMA_3), ("plain", PLAIN_TEMPLATE)):
        in_process = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
        bounded, direct, turns = [], [], []
        for i in range(args.renders):
            turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "word " * 40})
            variables = {"messages": list(turns), "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"}
            start = time.perf_counter()
            text = render_bounded(source, **variables)
            bounded.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert in_process.render(**variables) == text
            direct.append(time.perf_counter() - start)
        q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))] * 1000  # noqa: E731
        rows.append((name, statistics.median(bounded) * 1000, q(bounded, 0.9), statistics.median(direct) * 1000))
    print(f"process RSS {rss_mb(os.getpid()):.0f} MB, {args.renders} renders per template, conversation growing to {args.renders} messages")
    worker = getattr(getattr(__import__("edgelm.chat_template").chat_template, "_worker", None), "pid", None)
    if worker:  # the render worker (this checkout has one): what it holds of its own, the rest shared with this process
        with open(f"/proc/{worker}/smaps_rollup") as rollup:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup if line.split(":")[0] in ("Rss", "Pss", "Private_Dirty")}
        print(f"render worker: RSS {fields['Rss'] / 1024:.0f} MB, PSS {fields['Pss'] / 1024:.0f} MB, private {fields['Private_Dirty'] / 1024:.1f} MB")
    print()
    print("| template | bounded render median ms | p90 ms | in-process render median ms |")
    print("|---|---|---|---|")
    for name, median, p90, direct in rows:
        print(f"| {name} | {median:.2f} | {p90:.2f} | {direct:.2f} |")


if __name__ == "__main__":
    main()
