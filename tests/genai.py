"""Greedy tokens from onnxruntime-genai itself, as an app runs a folder: the independent reference for
what edgelm's own ONNX runtime generates."""

import numpy as np


def genai_greedy(folder, prompt: list[int], new_tokens: int, exact_length: bool = False) -> list[int]:
    """`new_tokens` greedy tokens after `prompt` (fewer where eos comes first, unless `exact_length`)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    length = len(prompt) + new_tokens
    params.set_search_options(max_length=length, do_sample=False, **({"min_length": length} if exact_length else {}))
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens
