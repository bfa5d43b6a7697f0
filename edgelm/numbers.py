"""The one gate for numbers: the ranges of float options (the command line's option type and the Python
API's SamplingOptions check with `NumberRange.check`), and the finite check on what a model computed.
Imports nothing heavy: the command line builds its option types from it at import."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class NumberRange:
    """Finite numbers from `low` (excluded when `low_open`) to `high` (None: no bound)."""

    low: float = 0.0
    high: float | None = None
    low_open: bool = False

    def describe(self) -> str:
        low = f"above {self.low:g}" if self.low_open else f"from {self.low:g}"
        return f"a finite number {low}" + (f" to {self.high:g}" if self.high is not None else "")

    def why_not(self, value) -> str | None:
        """What is wrong with `value` ("must be …, not nan"), or None when it is in range. NaN and ±inf
        are in no range: NaN passed every `<= 0` check it met."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"must be {self.describe()}, not {value!r}"
        except OverflowError:  # a whole number past float's range
            return f"must be {self.describe()}, not a whole number of {value.bit_length()} bits"
        below = number <= self.low if self.low_open else number < self.low
        if not math.isfinite(number) or below or (self.high is not None and number > self.high):
            return f"must be {self.describe()}, not {value}"
        return None

    def check(self, name: str, value) -> float:
        """`value` as a float, or ValueError naming `name`."""
        problem = self.why_not(value)
        if problem:
            raise ValueError(f"{name} {problem}")
        return float(value)


NON_NEGATIVE = NumberRange(0.0)
POSITIVE = NumberRange(0.0, low_open=True)
# a head temperature λ (calibrate's --init, --min): a float32 tensor's value; past ~10 a head's softmax is one-hot already
# (a stranger's --init 1e39 overflowed float32 in a traceback)
HEAD_TEMPERATURE = NumberRange(0.0, 1e4, low_open=True)
FRACTION = NumberRange(0.0, 1.0)
# each sampling option's range: SamplingOptions checks with it, and the command line's options are typed by it
SAMPLING_RANGES = {"temperature": NON_NEGATIVE, "top_p": FRACTION, "min_p": FRACTION, "repetition_penalty": POSITIVE}
SAMPLING_NAMES = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")  # what a model's files may recommend


def stated_sampling(values: dict, rename: dict[str, str] | None = None) -> tuple[dict, str | None]:
    """The sampling a model's files recommend, under SamplingOptions' names (`rename`: a file's name → ours, as GGUF's
    temp → temperature), each through the gate its option has; and what is wrong with the first bad one (None where
    none is): the caller refuses it in one line naming the file."""
    found = {}
    for key, value in values.items():
        name = (rename or {}).get(key, key)
        if name not in SAMPLING_NAMES or value is None:
            continue
        if name == "top_k":  # an int32 where GGUF and genai_config store it
            if not is_count(value) or value > INT32_MAX:
                return {}, f"top_k must be a whole number from 0 to {INT32_MAX}, not {str(value)[:40]}"
            found[name] = value
        elif not is_number(value) or (problem := SAMPLING_RANGES[name].why_not(as_float32(value))):
            return {}, f"{name} {problem if is_number(value) else f'must be a number, not {str(value)[:40]}'}"
        else:
            found[name] = float(value)
    return found, None


INT32_MAX = 2**31 - 1


def as_float32(value: float) -> float:
    """`value` as a float32 holds it (GGUF's sampling keys): infinity past its range (1e39 was a struct.error traceback at
    export), 0.0 below its smallest (a repetition_penalty of 1e-320 was written as 0, which every reader refuses)."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except (OverflowError, struct.error):  # struct.error: a whole number past float's range
        return math.inf


SEED_MAX = 2**32 - 1  # llama.cpp's seeds are uint32; one range for every engine
LOOKUP_NGRAM = 3  # the longest n-gram prompt-lookup decoding matches (llama.cpp's lookup: 4; LlamaPromptLookupDecoding: 2)
# its bound: the index keeps one table per length and each token costs O(n²), so 10^11 ran out of memory;
# llama.cpp's lookup caps n at LLAMA_NGRAM_MAX = 4, and matches longer than 16 tokens are already verbatim copies
LOOKUP_NGRAM_MAX = 16


def check_count(name: str, value, low: int, high: int | None = None, where: str = "") -> None:
    """A count given in Python: TypeError when it is no whole number (2.5, "3", True; Python's own range("3") is a
    TypeError), ValueError when it lies outside low..high. `where` follows the range in the message."""
    span = f"from {low}" + (f" to {high}" if high is not None else "") + where
    if type(value) is not int:
        raise TypeError(f"{name} must be a whole number {span}, not {type(value).__name__} {str(value)[:40]!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be a whole number {span}, not {value!r}")


def check_flag(name: str, value) -> None:
    """A switch given in Python: True or False, else a TypeError. A string is truthy whatever it says: a stranger's
    allow_pickle='false' (read from a config or an environment variable) unpickled the checkpoint it was to refuse."""
    if type(value) is not bool:
        raise TypeError(f"{name} must be True or False, not {type(value).__name__} {str(value)[:40]!r}")


def is_number(value) -> bool:
    """A number as JSON means one: an int or a float, never a bool. Python's True is the int 1, so a JSON
    `true` passed every isinstance(value, (int, float)) check and was read as 1.0. Every number read from a
    file a user or a stranger wrote goes through this, is_count or is_number_table."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_count(value, minimum: int = 0) -> bool:
    """A JSON integer (not a bool, not 2.0) of at least `minimum`."""
    return type(value) is int and value >= minimum


def is_number_table(value) -> bool:
    """Nested lists whose leaves are all numbers (is_number): a table torch or numpy may then convert."""
    if isinstance(value, list):
        return all(is_number_table(item) for item in value)
    return is_number(value)


class NotFinite(Exception):
    """A number the model computed (a logit, a perplexity, a parity metric) is NaN or infinite: the command
    ran, and its result is no number. The command line prints one line and exits 1, as a failed check."""


def exp_or_inf(x: float) -> float:
    """math.exp, but infinity past float64's range instead of OverflowError (a perplexity of finite but
    huge logits): the result gate then reports it as not finite."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def not_finite(values: dict) -> list[str]:
    """The keys of `values` whose value is a float that is NaN or infinite."""
    return [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
