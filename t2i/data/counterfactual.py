"""Counterfactual captions: a true caption with one attribute word swapped, so that it is false of its image.

GAN-CLS's discriminator learns "does this text match this image" from (real image, wrong text) pairs, and the
wrong text is a caption of another class (Reed et al., ICML 2016). A caption of another class nearly always
differs in petal colour, and always in class, so a discriminator can score every such pair by recognising the
class and its petal colour, and never check a centre colour or a petal count on its own. Measured on the v5
default's discriminator (``benchmarks/discriminator_probe.py``): it ranks the true caption above one with the
centre colour swapped for 63 % of training images but 45 % of unseen-class images (chance 50 %); for petal colour
84 % and 78 %. A counterfactual caption differs from the true one in exactly one stated value, so it can only
be rejected by checking that value: the swapped-word hard negatives of NegCLIP (Yuksekgonul et al., ICLR 2023),
here as GAN-CLS's wrong text.

The word lists are the synthetic set's colour, count and shape vocabularies (``t2i.datasets.synthetic_captions``);
they are also the common words of Oxford-102 captions. Only whole words are swapped ("oval-shaped" is left alone,
since "pointed-shaped" is not English), and the new word never already occurs in the caption, so the edit
changes one stated value to a value the caption does not state elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..datasets.synthetic_captions import COLOR_WORDS, COUNT_WORDS, SHAPE_WORDS

# Interchangeable words, by what they state. A shape is swapped for another shape's first whole word.
SWAPPABLE_WORDS: dict[str, tuple[str, ...]] = {
    "color": tuple(sorted(COLOR_WORDS)),
    "count": COUNT_WORDS,
    "shape": tuple(word for words in SHAPE_WORDS.values() for word in words if "-" not in word),
}
_SHAPE_GROUP = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}
_SHAPE_NAME = {shape: next(word for word in words if "-" not in word) for shape, words in SHAPE_WORDS.items()}
_WORD = re.compile(r"(?<![\w-])[A-Za-z]+(?![\w-])")  # a whole word, not part of a hyphenated one


def _replacements(kind: str, word: str, present: set[str]) -> list[str]:
    if kind == "shape":
        return [name for shape, name in _SHAPE_NAME.items() if not present & set(SHAPE_WORDS[shape])]
    return [w for w in SWAPPABLE_WORDS[kind] if w not in present]


def swappable_words(caption: str) -> list[tuple[str, re.Match]]:
    """The words of ``caption`` a counterfactual may swap, as (kind, match) in reading order; kind is one of
    ``SWAPPABLE_WORDS``' keys."""
    found = []
    for match in _WORD.finditer(caption):
        word = match.group().lower()
        for kind, words in SWAPPABLE_WORDS.items():
            if word in words:
                found.append((kind, match))
                break
    return found


def swap_stated_word(caption: str, word: str, rng: np.random.Generator) -> str | None:
    """``caption`` with its one whole-word occurrence of ``word`` (a colour, count or shape word, any case)
    swapped for a word of the same kind that the caption does not contain; ``None`` when ``word`` is not
    swappable, occurs other than exactly once, or has no unused replacement. Used to edit one chosen stated
    value, e.g. the centre colour that `caption_attributes` found."""
    matches = [(kind, match) for kind, match in swappable_words(caption) if match.group().lower() == word.lower()]
    if len(matches) != 1:
        return None
    return _swap(caption, *matches[0], rng)


def _swap(caption: str, kind: str, match: re.Match, rng: np.random.Generator) -> str | None:
    present = {m.group().lower() for m in _WORD.finditer(caption)}
    options = _replacements(kind, match.group().lower(), present)
    if not options:
        return None
    new = options[rng.integers(len(options))]
    if match.group()[0].isupper():
        new = new.capitalize()
    return caption[: match.start()] + new + caption[match.end() :]


def counterfactual_caption(caption: str, rng: np.random.Generator, kinds: Sequence[str] = tuple(SWAPPABLE_WORDS)) -> str | None:
    """``caption`` with one colour, count or shape word swapped for another of its kind, or ``None`` when it has
    no such word (or no unused replacement).

    The kind is drawn uniformly among the ``kinds`` the caption has (so a caption's one count word is swapped as
    often as all its colour words together), then one of its words of that kind, then the new word among those
    of the kind that the caption does not contain. Case and everything else are kept.

    Raises:
        ValueError: a kind not in ``SWAPPABLE_WORDS``.
    """
    if set(kinds) - set(SWAPPABLE_WORDS):
        raise ValueError(f"kinds must be a subset of {tuple(SWAPPABLE_WORDS)}, got {tuple(kinds)}")
    present = {match.group().lower() for match in _WORD.finditer(caption)}
    by_kind: dict[str, list[re.Match]] = {}
    for kind, match in swappable_words(caption):
        if kind in kinds and _replacements(kind, match.group().lower(), present):
            by_kind.setdefault(kind, []).append(match)
    if not by_kind:
        return None
    kind = sorted(by_kind)[rng.integers(len(by_kind))]
    return _swap(caption, kind, by_kind[kind][rng.integers(len(by_kind[kind]))], rng)


def counterfactual_captions(captions: Sequence[Sequence[str]], seed: int = 0) -> tuple[list[list[str]], list[bool]]:
    """One counterfactual for every caption of a dataset (a list of caption lists, one per image), drawn from a
    generator seeded with ``seed``, and a flat list saying which captions have one. A caption without a
    swappable word is returned unchanged and flagged ``False``: it must not serve as its own negative."""
    rng = np.random.default_rng(seed)
    edited, swapped = [], []
    for image_captions in captions:
        row = []
        for caption in image_captions:
            counterfactual = counterfactual_caption(caption, rng)
            row.append(caption if counterfactual is None else counterfactual)
            swapped.append(counterfactual is not None)
        edited.append(row)
    return edited, swapped
