"""Caption fragments: short spans of the training captions, so the generator is trained where short prompts embed.

Visitors type "purple", "a red flower" or "petals"; the training captions are sentences of 8–20 words. The text
encoder puts a short text off the captions' manifold (norm ≈ 0.75 against ≈ 1.0, nearer the captions' centroid),
where a generator trained on whole captions was never asked for anything, and Reed's generator draws an empty
frame there. A fragment is a span of 1 to ``max_words`` consecutive words of a caption ("pointed purple petals",
"a yellow", "this flower has"): it states part of what the image shows, or nothing false about it, so it is a
true text for that image, and GAN-CLS can train on (image, fragment) pairs like on (image, caption) pairs. It is
random cropping, applied to the text instead of the image.
"""

from collections.abc import Sequence

import numpy as np

_EDGE_PUNCTUATION = ",.;:!?\"'()"


def caption_fragment(caption: str, rng: np.random.Generator, max_words: int = 4) -> str:
    """A span of 1 to ``max_words`` consecutive words of ``caption`` (length, then start, uniform), without
    punctuation at its ends. A caption of whitespace only, or whose span is punctuation only, is returned as is.

    Raises:
        ValueError: ``max_words`` < 1.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be ≥ 1, got {max_words}")
    words = caption.split()
    if not words:
        return caption
    length = int(rng.integers(1, min(max_words, len(words)) + 1))
    start = int(rng.integers(0, len(words) - length + 1))
    fragment = " ".join(words[start : start + length]).strip(_EDGE_PUNCTUATION + " ")
    return fragment or caption


def caption_fragments(captions: Sequence[Sequence[str]], seed: int = 0, max_words: int = 4) -> list[list[str]]:
    """One fragment for every caption of a dataset (a list of caption lists, one per image, as the dataset's
    ``captions`` column), drawn from a generator seeded with ``seed``: the same dataset always gets the same
    fragments, so every run shares one cached encoding of them.

    Raises:
        TypeError: ``captions`` holds a string where a list of one image's captions belongs.
    """
    rng = np.random.default_rng(seed)
    fragments = []
    for image_captions in captions:
        if isinstance(image_captions, str):
            raise TypeError(f"captions must be one list of captions per image, got the string {image_captions[:50]!r}")
        fragments.append([caption_fragment(caption, rng, max_words) for caption in image_captions])
    return fragments
