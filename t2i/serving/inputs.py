"""Checking what a user sends: numbers within their ranges, and a prompt cleaned to exactly what the model reads.

User mistakes raise ``InputError`` with a message written for the user; app.py turns it into ``gr.Error``.
"""

from __future__ import annotations

import unicodedata
from decimal import Decimal

from ..text_encoders import CharTokenizer, fold_characters, unreadable_characters

MAX_IMAGES = 16
MIN_STEPS, MAX_STEPS = 2, 16
MAX_SEED = 2**32 - 1  # the range numpy, diffusers and most UIs accept
MAX_PROMPT_CHARS = 300  # for sub-word tokenizers: far above a one-sentence caption, far below 256 tokens
ZERO_WIDTH_SPACE = "\u200b"


class InputError(ValueError):
    """A request the app refuses, with a message meant for the person who sent it."""


def check_int(value: object, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or ``InputError`` naming the parameter and its range."""
    wanted = f"{name} must be a whole number from {low} to {high}"
    if isinstance(value, bool) or value is None or value == "":
        raise InputError(f"{wanted}; got {'nothing' if value in (None, '') else repr(value)}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float, e.g. 10**400
        raise InputError(f"{wanted}; got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        # A browser's number field sends a long whole number as a float: say 100000000000000000000000, not 1e+23.
        whole = isinstance(value, float) and number.is_integer() and abs(number) < 1e30  # not 300 digits for 1e300
        shown = format(Decimal(repr(float(value))).to_integral_value(), "f") if whole else repr(value)
        raise InputError(f"{wanted}; got {shown}.")
    return int(number)


def prompt_limit(tokenizer) -> int:
    """How many characters of a prompt the model reads: the tokenizer's length for Reed's char tokenizer."""
    return tokenizer.model_max_length if isinstance(tokenizer, CharTokenizer) else MAX_PROMPT_CHARS


def _shown(characters: list[str]) -> str:
    """Characters for a notice: invisible ones (private use, marks, variation selectors) by code point, e.g. U+E000."""
    return " ".join(ch if ch.isprintable() and unicodedata.category(ch)[0] not in "MC" else f"U+{ord(ch):04X}" for ch in characters)


MAX_SCANNED_CHARS = 100_000
"""The most characters of a prompt that are read looking for what the model reads; the rest is ignored."""


def _clean(text: str, tokenizer) -> tuple[str, list[str], list[str]]:
    """``text`` as the model reads it before the cut (see `clean_prompt`), the notices, the unreadable characters."""
    notices = []
    text = unicodedata.normalize("NFC", text)
    # A control character (Cc: NUL, BEL, ...) or a zero-width space stands where a separator was ("red\x00petals"
    # reads "red petals"); any other invisible formatting character (Cf: bidi overrides, zero-width joiners) sits
    # inside a word and goes.
    as_space = [not ch.isspace() and (unicodedata.category(ch) == "Cc" or ch == ZERO_WIDTH_SPACE) for ch in text]
    visible = "".join(" " if ch.isspace() or space else ch for ch, space in zip(text, as_space)
                      if space or unicodedata.category(ch) != "Cf")
    removed = len(text) - len(visible)
    if any(as_space):
        notices.append(f"Read {sum(as_space)} control or zero-width space character(s) as spaces.")
    if removed:
        notices.append(f"Removed {removed} invisible formatting character(s).")
    folded = fold_characters(visible)
    if folded != visible:
        changed = {ch: fold_characters(ch) for ch in sorted(set(visible)) if fold_characters(ch) != ch}
        folds = " ".join([f"{ch}→{plain}" for ch, plain in changed.items() if plain][:20])
        marks = sum(visible.count(ch) for ch, plain in changed.items() if not plain)  # lone combining marks fold to nothing
        dropped = f"dropped {marks} lone accent mark(s)" if marks else ""
        notices.append("Read accented or special letters as plain ones: "
                       + (f"{folds} ({'and ' + dropped})" if folds and dropped else folds or dropped))
        visible = folded
    unknown = unreadable_characters(tokenizer, visible)
    if unknown:
        dropped = set(unknown)
        visible = "".join(ch for ch in visible if ch not in dropped)
    return " ".join(visible.split()), notices, unknown


def clean_prompt(prompt: object, tokenizer) -> tuple[str, list[str]]:
    """The prompt exactly as the model will read it, plus notices about what was changed.

    Control characters and zero-width spaces become spaces, other invisible formatting characters (including right-to-left overrides) are
    removed, accents and compatibility forms are folded to plain letters (`fold_characters`, as the char tokenizer
    reads them), characters the tokenizer cannot represent are dropped, whitespace is collapsed and the text is cut
    to ``prompt_limit``. Only what the model reads counts toward the cut: a caption after 3,000 spaces or emoji is
    read. At most `MAX_SCANNED_CHARS` characters are looked at.
    Raises ``InputError`` when nothing readable is left.
    """
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text; got {type(prompt).__name__}.")
    limit = prompt_limit(tokenizer)
    # Cleaned in growing windows from the start, so that a megabyte of text costs about what the first part that
    # fills the limit does, while filler the cleaning drops (spaces, emoji, invisible characters) is looked past.
    window = 10 * limit
    while True:
        text, notices, unknown = _clean(prompt[:window], tokenizer)
        if len(text) > limit or window >= min(len(prompt), MAX_SCANNED_CHARS):
            break
        window = min(4 * window, MAX_SCANNED_CHARS)
    if not text:
        scanned = f" in its first {MAX_SCANNED_CHARS:,} characters" if len(prompt) > MAX_SCANNED_CHARS else ""
        if unknown:
            raise InputError(
                f"the prompt has no characters this model can read{scanned} (it reads English letters, digits and "
                f"punctuation); it ignores {_shown(unknown[:20])}. Describe the flower in English."
            )
        raise InputError(f"the prompt is empty{scanned}: describe the flower, e.g. 'a flower with five red petals'.")
    if unknown:
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        notices.append(f"Ignored characters the model cannot read: {_shown(unknown[:20])}{more}")
    if len(text) > limit:
        notices.append(f"The prompt was cut to {limit} characters, as many as the model reads.")
        text = text[:limit].rstrip()
    return text, notices
