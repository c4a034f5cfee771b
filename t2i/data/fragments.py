"""Caption fragments: short spans of the training captions, so the generator is trained where short prompts embed.

Visitors type "purple", "a red flower" or "petals"; the training captions are sentences of 8–20 words. The text
encoder puts a short text off the captions' manifold (norm ≈ 0.75 against ≈ 1.0, nearer the captions' centroid),
where a generator trained on whole captions was never asked for anything, and Reed's generator draws an empty
frame there. A fragment is a span of 1 to ``max_words`` consecutive words of a caption ("pointed purple petals",
"a yellow", "this flower has"): it states part of what the image shows, or nothing about it (28 % of the
synthetic set's fragments are words such as "petals", "a" or "this"), so it is a true text for that image, and
GAN-CLS can train on (image, fragment) pairs like on (image, caption) pairs. It is cropping, applied to the text
instead of the image, but drawn once per caption with a fixed seed, so the fragments are encoded once and cached.
A bare colour word may name the centre or a secondary colour ("blue" of purple petals with blue dots), as a
visitor's "blue" may too. Spans never start after a negation ("no", "not", "without", ...): "this flower has no
yellow petals" must not give "yellow petals".
"""

import unicodedata
from collections.abc import Sequence

import numpy as np

_NEGATIONS = frozenset({"no", "not", "without", "never", "nor", "neither", "none"})


def _strip_edges(text: str) -> str:
    # Unicode punctuation and symbols (« », “ ”, …, emoji) as well as ASCII: an edge that is only that says nothing.
    is_edge = lambda c: c.isspace() or unicodedata.category(c)[0] in "PS"  # noqa: E731
    start, end = 0, len(text)
    while start < end and is_edge(text[start]):
        start += 1
    while end > start and is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_negation(word: str) -> bool:
    word = _strip_edges(word).lower()
    return word in _NEGATIONS or word.endswith("n't")


def caption_fragment(caption: str, rng: np.random.Generator, max_words: int = 4) -> str:
    """A span of 1 to ``max_words`` consecutive words of ``caption`` (length, then start, uniform) before its first
    negation word, without punctuation or symbols at its ends. A caption with no words before a negation, or whose
    span is punctuation or symbols only, is returned as is.

    Raises:
        TypeError: ``caption`` is not a string.
        ValueError: ``max_words`` is not an integer ≥ 1.
    """
    if not isinstance(caption, str):
        raise TypeError(f"a caption must be a string, got {type(caption).__name__} {caption!r:.50}")
    if isinstance(max_words, bool) or not isinstance(max_words, (int, np.integer)) or max_words < 1:
        raise ValueError(f"max_words must be an integer ≥ 1, got {max_words!r}")
    words = caption.split()
    words = words[: next((i for i, word in enumerate(words) if _is_negation(word)), len(words))]
    if not words:
        return caption
    length = int(rng.integers(1, min(max_words, len(words)) + 1))
    start = int(rng.integers(0, len(words) - length + 1))
    return _strip_edges(" ".join(words[start : start + length])) or caption


def caption_fragments(captions: Sequence[Sequence[str]], seed: int = 0, max_words: int = 4) -> list[list[str]]:
    """One fragment for every caption of a dataset (a list of caption lists, one per image, as the dataset's
    ``captions`` column), drawn from a generator seeded with ``seed``: the same dataset always gets the same
    fragments, so every run shares one cached encoding of them.

    Raises:
        TypeError: ``captions`` holds a string where a list of one image's captions belongs, or a caption that is
            not a string.
        ValueError: ``max_words`` is not an integer ≥ 1.
    """
    rng = np.random.default_rng(seed)
    fragments = []
    for image_captions in captions:
        if isinstance(image_captions, str):
            raise TypeError(f"captions must be one list of captions per image, got the string {image_captions[:50]!r}")
        fragments.append([caption_fragment(caption, rng, max_words) for caption in image_captions])
    return fragments
