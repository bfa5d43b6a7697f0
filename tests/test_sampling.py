"""The one sampler and the streaming loop, on synthetic logits (no model needed)."""

import numpy as np
import pytest

from edgelm.runtime.backend import Backend
from edgelm.runtime.generate import generate_from_ids
from edgelm.runtime.sampling import Sampler, SamplingOptions


def test_greedy_top_k_top_p_min_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert Sampler(SamplingOptions())(logits) == 0
    draws = lambda **o: {Sampler(SamplingOptions(temperature=1.0, seed=s, **o))(logits) for s in range(200)}  # noqa: E731
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.75) == {0, 1}  # 0.5 + 0.3 passes 0.75
    assert draws(min_p=0.5) == {0, 1}  # 0.15 < 0.5 × 0.5
    assert draws() == {0, 1, 2, 3}
    assert Sampler(SamplingOptions(temperature=1.0, seed=7))(logits) == Sampler(SamplingOptions(temperature=1.0, seed=7))(logits)


def test_a_vanishing_temperature_is_greedy_not_nan():
    """Dividing raw logits by 1e-320 overflowed to inf − inf = NaN; the max is subtracted first."""
    logits = np.array([3.0, 9.0, -2.0, 8.5], dtype=np.float32)
    assert {Sampler(SamplingOptions(temperature=1e-320, seed=s))(logits) for s in range(20)} == {1}


def test_repetition_penalty_demotes_seen_tokens():
    logits = np.array([2.0, 1.9, -1.0])
    assert Sampler(SamplingOptions(repetition_penalty=1.2))(logits, seen=[0]) == 1
    assert Sampler(SamplingOptions(repetition_penalty=1.0))(logits, seen=[0]) == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("options", [SamplingOptions(), SamplingOptions(temperature=0.8, top_p=0.9, seed=0)])
def test_a_non_finite_logit_row_is_refused_not_sampled(bad, options):
    """Greedy argmax of a NaN row was token 0 (eos: an empty reply, exit 0); sampling one raised numpy's
    'probabilities contain NaN'. Every row the sampler sees passes one finite check."""
    from edgelm.numbers import NotFinite

    logits = np.array([1.0, 2.0, 0.5], dtype=np.float32)
    logits[1] = bad
    with pytest.raises(NotFinite, match="NaN or infinite logits"):
        Sampler(options)(logits)


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repetition_penalty"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_sampling_options_refuse_what_the_command_line_refuses(field, value):
    """The Python API checks with the same ranges (numbers.SAMPLING_RANGES) as the options' parser."""
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        SamplingOptions(**{field: value})


@pytest.mark.parametrize("value", ["0.5", True, None])
def test_sampling_options_take_numbers_not_their_text(value):
    """Stranger round 12: generate(temperature="0.5") ran; a wrong type is a TypeError, as for any Python argument."""
    with pytest.raises(TypeError, match="temperature must be a number"):
        SamplingOptions(temperature=value)
    assert SamplingOptions(temperature=np.float32(0.5), top_p=1).temperature == 0.5


def test_extreme_but_valid_options_never_make_nan():
    """A penalty of 1e-300 made a seen logit +inf (then inf − inf = NaN); top_p 0 kept no token at all."""
    logits = np.array([3.0, 2.0, -1.0], dtype=np.float32)
    for options in (SamplingOptions(temperature=1.0, repetition_penalty=1e-300, seed=0),
                    SamplingOptions(temperature=1.0, repetition_penalty=1e300, seed=0),
                    SamplingOptions(temperature=1.0, top_p=0.0, seed=0)):
        assert Sampler(options)(logits, seen=[0, 2]) in (0, 1, 2)
    assert Sampler(SamplingOptions(temperature=1.0, top_p=0.0, seed=0))(logits) == 0


class Scripted(Backend):
    """Emits a fixed token sequence greedily."""

    def __init__(self, script, vocab=8):
        super().__init__()
        self.script, self.vocab, self.context_length = script, vocab, 100

    def _truncate(self, length):
        return length

    def _evaluate(self, ids, last_only):
        rows = []
        for n in range(self.position + 1, self.position + len(ids) + 1):
            row = np.zeros(self.vocab, np.float32)
            row[self.script[min(n - 1, len(self.script) - 1)]] = 1
            rows.append(row)
        return np.stack(rows[-1:] if last_only else rows)


class Letters:
    """Token i is the letter 'a' + i; 7 is the end."""

    eos_id = 7
    end_ids = frozenset({7})

    def every_end_id(self):
        return self.end_ids

    def ends_reply(self, token):  # Tokenizer's contract: what ends a reply
        return token == self.eos_id

    def is_control(self, token):  # and what shows no text in one
        return False

    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


def test_stream_stops_at_eos_and_at_stop_strings():
    script = [0, 1, 2, 3, 4, 7]  # after the 2-token prompt, positions 1.. emit b c d e <eos>
    pieces = list(generate_from_ids(Scripted(script), Letters(), [0, 0], max_new_tokens=10))
    assert "".join(p.text for p in pieces) == "bcde" and len(pieces) == 4
    pieces = list(generate_from_ids(Scripted(script), Letters(), [0, 0], max_new_tokens=10, stop=("d",)))
    assert "".join(p.text for p in pieces) == "bc"


def test_ignore_eos_never_chooses_an_end_token():
    """llama.cpp's --ignore-eos: the end token's logit is -inf, so the reply runs to max_new_tokens; greedy takes the
    runner-up where eos would have won, sampling never draws it."""
    script = [0, 1, 2, 3, 4, 7, 7, 7]  # b c d e <eos> <eos> …
    pieces = list(generate_from_ids(Scripted(script), Letters(), [0, 0], max_new_tokens=8, options=SamplingOptions(ignore_eos=True)))
    assert [p.token for p in pieces] == [1, 2, 3, 4, 0, 0, 0, 0]  # row [0 … 0 1] without its 1: the argmax of zeros
    logits = np.log(np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3]))
    assert 7 not in {Sampler(SamplingOptions(temperature=1.0, seed=s, ignore_eos=True), {7})(logits) for s in range(100)}
    assert 7 in {Sampler(SamplingOptions(temperature=1.0, seed=s), {7})(logits) for s in range(100)}
    with pytest.raises(TypeError, match="ignore_eos must be True or False"):
        SamplingOptions(ignore_eos="yes")


def test_a_stop_string_spanning_tokens_stops_and_nothing_of_it_shows():
    """Chat's stop strings ("\\nUser:") are several tokens: text that could begin one is held back until it
    does or does not; a held end that never completes comes out last, as a piece without a token."""
    script = [0, 1, 2, 3, 4, 7]  # b c d e <eos>
    pieces = list(generate_from_ids(Scripted(script), Letters(), [0, 0], max_new_tokens=10, stop=("cd",)))
    assert [p.text for p in pieces] == ["b", "", ""] and [p.token for p in pieces] == [1, 2, 3]
    pieces = list(generate_from_ids(Scripted(script), Letters(), [0, 0], max_new_tokens=10, stop=("dex",)))
    assert "".join(p.text for p in pieces) == "bcde" and [p.token for p in pieces] == [1, 2, 3, 4, None]
    pieces = list(generate_from_ids(Scripted(script), Letters(), [0, 0], max_new_tokens=3, stop=("dx",)))
    assert [p.text for p in pieces] == ["b", "c", "", "d"] and pieces[-1].token is None  # the budget ends on a held "d"
