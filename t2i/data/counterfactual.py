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
they are also common in Oxford-102 captions. Only whole words are swapped ("oval-shaped" is left alone, since
"pointed-shaped" is not English), only values the caption states once, and never in a negated caption
(`swappable_words`); the new word never occurs in the caption already. On the synthetic captions every
counterfactual then states exactly one value that the image does not have (62,415 of the 65,600 training
captions get one). Free English can still defeat the rule ("several" is not exclusive of "five" in Oxford's
captions), so on other data a counterfactual is false with high probability, not surely.

A second kind, `exchange_colors`, keeps every stated value and exchanges two colour words ("white petals with
red edges" → "red petals with white edges"): false of the image whenever each colour is bound to its part, which
is the binding a generator gets wrong when it paints the edge or centre colour over the petals. Two colours
joined directly ("white and yellow in colour", "pink, white") are never exchanged, since there the order means
nothing.

Either kind can put a word where the training captions never put it: a centre-only colour on petals ("black
petals", "green petals": no class of the synthetic set has them), a modifier before a colour that never takes one
("pale white"). Such a caption is false of every image, so a discriminator can reject it from its text alone and
learns nothing about the image from it: 30 % of word swaps and 75 % of exchanges on the synthetic training
captions hold a word pair that no training caption has. With ``plausible`` (`caption_bigrams` of the training
captions) an edit is drawn only among those whose new word pairs all occur in some training caption, so it reads
like a caption of the data and must be checked against the image.

A swapped colour drawn uniformly is mostly far from the true one (red petals called blue), which a discriminator
rejects from a coarse hue; the v9 generator's wrong colours are mostly near ones (yellow drawn orange, a brown
centre drawn black: 42 % of its wrong petal colours on unseen classes are one of the two palette colours nearest
the stated one, 18 % by chance; ``benchmarks/attribute_confusion.py``). With ``near_colors`` = k a colour is
swapped only for one of the k allowed colours nearest it (`COLOR_RGB`, Euclidean in sRGB), the hardest negatives
for a colour, as hard-negative mining picks the nearest non-matching sample.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from ..datasets.synthetic_captions import COLOR_WORDS, COUNT_WORDS, SHAPE_WORDS

# Interchangeable words, by what they state. A shape is swapped for another shape's first whole word.
SWAPPABLE_WORDS: dict[str, tuple[str, ...]] = {
    "color": tuple(sorted(COLOR_WORDS)),
    "count": COUNT_WORDS,
    "shape": tuple(word for words in SHAPE_WORDS.values() for word in words if "-" not in word),
}
# The colour words' usual sRGB values, CSS Color Module 4's named colours ("peach" is CSS peachpuff), independent of
# the synthetic renderer's palette so that "near" means what the word means in English, on any data.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0), "blue": (0, 0, 255), "brown": (165, 42, 42), "green": (0, 128, 0), "lavender": (230, 230, 250),
    "magenta": (255, 0, 255), "maroon": (128, 0, 0), "orange": (255, 165, 0), "peach": (255, 218, 185),
    "pink": (255, 192, 203), "purple": (128, 0, 128), "red": (255, 0, 0), "turquoise": (64, 224, 208),
    "white": (255, 255, 255), "yellow": (255, 255, 0),
}
# A caption with any of these may state a value only to deny it ("not red", "no yellow centre"): swapping the
# value would leave it true, so such captions get no counterfactual.
NEGATIONS = frozenset(["not", "no", "without", "never", "nor", "neither", "non", "isn", "aren", "t"])
_SHAPE_GROUP = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}
_SHAPE_NAME = {shape: next(word for word in words if "-" not in word) for shape, words in SHAPE_WORDS.items()}
_WORD = re.compile(r"(?<![\w-])[A-Za-z]+(?![\w-])")  # a whole word, not part of a hyphenated one
_JOINED = re.compile(r"\W*(?:(?:and|or|&|to)\W*)?", re.IGNORECASE)  # "white and yellow", "pink, white": unordered


def caption_bigrams(captions: Iterable[str]) -> frozenset[tuple[str, str]]:
    """Every pair of adjacent words (lower case, hyphenated words split) in ``captions``, the vocabulary of
    word pairs a ``plausible`` counterfactual keeps to.

    Raises:
        TypeError: ``captions`` is a string, or holds something that is not a string.
    """
    if isinstance(captions, str):
        raise TypeError(f"captions must be an iterable of captions, not the string {captions[:50]!r}")
    pairs = set()
    for caption in captions:
        if not isinstance(caption, str):
            raise TypeError(f"every caption must be a string, got {caption!r}")
        words = _words_of(caption)
        pairs.update(zip(words, words[1:]))
    return frozenset(pairs)


def _fits(caption: str, start: int, end: int, word: str, plausible: frozenset[tuple[str, str]] | None) -> bool:
    """Whether ``word`` at caption[start:end] makes only word pairs that ``plausible`` holds (always, without it)."""
    if plausible is None:
        return True
    before, after = _words_of(caption[:start])[-1:], _words_of(caption[end:])[:1]
    return all(pair in plausible for pair in [*((b, word.lower()) for b in before), *((word.lower(), a) for a in after)])


def _value(kind: str, word: str) -> str:
    return _SHAPE_GROUP[word] if kind == "shape" else word


def _words_of(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption.lower())  # every word, parts of hyphenated ones too


def _kind_of(word: str) -> str | None:
    return next((kind for kind, words in SWAPPABLE_WORDS.items() if word in words), None)


def swappable_words(caption: str) -> list[tuple[str, re.Match]]:
    """The words of ``caption`` a counterfactual may swap, as (kind, match) in reading order; kind is one of
    ``SWAPPABLE_WORDS``' keys.

    A word qualifies only when swapping it surely makes the caption false: its value is stated once (not "red
    flower with red petals", not "slender, narrow petals", hyphenated words included), a count word is the
    caption's only count word (not "between four and six petals"), and the caption has no negation (`NEGATIONS`).
    """
    tokens = _words_of(caption)
    if NEGATIONS.intersection(tokens):
        return []
    stated: dict[tuple[str, str], int] = {}
    for token in tokens:
        if kind := _kind_of(token):
            stated[kind, _value(kind, token)] = stated.get((kind, _value(kind, token)), 0) + 1
    counts = sum(n for (kind, _), n in stated.items() if kind == "count")
    found = []
    for match in _WORD.finditer(caption):
        word = match.group().lower()
        kind = _kind_of(word)
        if kind and stated[kind, _value(kind, word)] == 1 and (kind != "count" or counts == 1):
            found.append((kind, match))
    return found


def _replacements(kind: str, present: set[str]) -> list[str]:
    if kind == "shape":
        return [name for shape, name in _SHAPE_NAME.items() if not present & set(SHAPE_WORDS[shape])]
    return [w for w in SWAPPABLE_WORDS[kind] if w not in present]


def _swap(caption: str, kind: str, match: re.Match, rng: np.random.Generator,
          plausible: frozenset[tuple[str, str]] | None = None, near_colors: int = 0) -> str | None:
    options = [w for w in _replacements(kind, set(_words_of(caption))) if _fits(caption, match.start(), match.end(), w, plausible)]
    if not options:
        return None
    old = match.group()
    if kind == "color" and near_colors > 0:
        options = nearest_colors(COLOR_RGB, old.lower(), near_colors, among=options)
    new = options[rng.integers(len(options))]
    return caption[: match.start()] + _cased_like(old, new) + caption[match.end() :]


def swap_stated_word(caption: str, word: str, rng: np.random.Generator) -> str | None:
    """``caption`` with its whole word ``word`` (a colour, count or shape word, any case) swapped for a word of the
    same kind that the caption does not contain; ``None`` when ``word`` is not one of `swappable_words` (absent,
    stated twice, a negated caption) or has no unused replacement. Used to edit one chosen stated value, e.g. the
    centre colour that `caption_attributes` found."""
    matches = [(kind, match) for kind, match in swappable_words(caption) if match.group().lower() == word.lower()]
    return _swap(caption, *matches[0], rng) if len(matches) == 1 else None


def nearest_colors(palette: dict[str, Sequence[float]], name: str, k: int = 2, among: Iterable[str] | None = None) -> list[str]:
    """The ``k`` colours of ``among`` (default: all of ``palette``, name → RGB) nearest ``name``'s RGB by Euclidean
    distance, nearest first, ``name`` itself excluded; ties go to the alphabetically first.

    Raises:
        KeyError: ``name`` or a colour of ``among`` is not in ``palette``.
    """
    rgb = palette[name]
    candidates = sorted(set(palette if among is None else among) - {name})
    return sorted(candidates, key=lambda c: sum((a - b) ** 2 for a, b in zip(palette[c], rgb)))[:k]


def counterfactual_caption(caption: str, rng: np.random.Generator, kinds: Sequence[str] = tuple(SWAPPABLE_WORDS),
                           plausible: frozenset[tuple[str, str]] | None = None, near_colors: int = 0) -> str | None:
    """``caption`` with one colour, count or shape word swapped for another of its kind, or ``None`` when it has
    none of `swappable_words` (or no unused replacement).

    The kind is drawn uniformly among the ``kinds`` the caption has (so a caption's one count word is swapped as
    often as all its colour words together), then one of its words of that kind, then the new word among those
    of the kind that the caption does not contain. Case ("Red", "RED") and everything else are kept. With
    ``plausible`` (`caption_bigrams`), only new words that make no word pair outside it count as replacements;
    with ``near_colors`` = k > 0, a colour word is replaced only by one of the k replacements nearest it in
    `COLOR_RGB` (0: any).

    Raises:
        TypeError: ``caption`` is not a string; ``kinds`` is a string, not a sequence of kind names; ``near_colors``
            is not an integer.
        ValueError: a kind not in ``SWAPPABLE_WORDS``; ``near_colors`` < 0.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {caption!r}")
    _check_near_colors(near_colors)
    if isinstance(kinds, str):
        raise TypeError(f"kinds must be a sequence of kind names such as ('color',), not the string {kinds!r}")
    if set(kinds) - set(SWAPPABLE_WORDS):
        raise ValueError(f"kinds must be a subset of {tuple(SWAPPABLE_WORDS)}, got {tuple(kinds)}")
    present = set(_words_of(caption))
    by_kind: dict[str, list[re.Match]] = {}
    for kind, match in swappable_words(caption):
        if kind in kinds and any(_fits(caption, match.start(), match.end(), w, plausible) for w in _replacements(kind, present)):
            by_kind.setdefault(kind, []).append(match)
    if not by_kind:
        return None
    kind = sorted(by_kind)[rng.integers(len(by_kind))]
    return _swap(caption, kind, by_kind[kind][rng.integers(len(by_kind[kind]))], rng, plausible, near_colors)


def _check_near_colors(near_colors: int) -> None:
    if isinstance(near_colors, bool) or not isinstance(near_colors, (int, np.integer)):
        raise TypeError(f"near_colors must be an integer (0: any colour), got {near_colors!r}")
    if near_colors < 0:
        raise ValueError(f"near_colors must be >= 0 (0: any colour), got {near_colors}")


def _cased_like(word: str, new: str) -> str:
    if word.isupper() and len(word) > 1:
        return new.upper()
    return new.capitalize() if word[0].isupper() else new


def exchange_colors(caption: str, rng: np.random.Generator, plausible: frozenset[tuple[str, str]] | None = None) -> str | None:
    """``caption`` with two of its colour words exchanged, each keeping the other's case and place, or ``None``
    when it states fewer than two distinct colours that `swappable_words` allows to edit, or only colours joined
    directly ("white and yellow", "pink, white", "red to orange"), whose order states nothing. The pair is drawn
    uniformly among the allowed ones; with ``plausible`` (`caption_bigrams`), among those whose exchange makes no
    word pair outside it.

    Raises:
        TypeError: ``caption`` is not a string.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {caption!r}")
    colors = [match for kind, match in swappable_words(caption) if kind == "color"]
    pairs = [(a, b) for i, a in enumerate(colors) for b in colors[i + 1 :]
             if a.group().lower() != b.group().lower() and not _JOINED.fullmatch(caption[a.end() : b.start()])
             and _fits(caption, a.start(), a.end(), b.group(), plausible) and _fits(caption, b.start(), b.end(), a.group(), plausible)]
    if not pairs:
        return None
    first, second = pairs[rng.integers(len(pairs))]
    return (caption[: first.start()] + _cased_like(first.group(), second.group().lower()) + caption[first.end() : second.start()]
            + _cased_like(second.group(), first.group().lower()) + caption[second.end() :])


def counterfactual_captions(captions: Sequence[Sequence[str]], seed: int = 0, exchange: float = 0.0,
                            plausible: bool = False, near_colors: int = 0) -> tuple[list[list[str]], list[bool]]:
    """One counterfactual for every caption of a dataset (a list of caption lists, one per image), drawn from a
    generator seeded with ``seed``, and a flat list saying which captions have one. With probability
    ``exchange`` (in [0, 1]) a caption that allows it gets `exchange_colors` instead of `counterfactual_caption`.
    ``plausible`` keeps every edit to the word pairs of ``captions`` themselves (`caption_bigrams`); ``near_colors``
    as in `counterfactual_caption`. A caption without an allowed edit is returned unchanged and flagged ``False``:
    it must not serve as its own negative.

    Raises:
        TypeError: a row is a string, not a list of captions; a caption is not a string; ``exchange`` is not a
            number; ``plausible`` is not a bool; ``near_colors`` is not an integer.
        ValueError: ``exchange`` is not in [0, 1]; ``near_colors`` < 0.
    """
    if not isinstance(plausible, (bool, np.bool_)):
        raise TypeError(f"plausible must be True or False, got {plausible!r}")
    _check_near_colors(near_colors)
    if isinstance(exchange, bool) or not isinstance(exchange, (int, float)):
        raise TypeError(f"exchange must be a number in [0, 1], got {exchange!r}")
    if not 0.0 <= exchange <= 1.0:  # NaN fails this too
        raise ValueError(f"exchange must be a probability in [0, 1], got {exchange}")
    for image_captions in captions:
        if isinstance(image_captions, str):
            raise TypeError(f"captions must be one list of captions per image, got the string {image_captions[:50]!r}")
    pairs = caption_bigrams(caption for image_captions in captions for caption in image_captions) if plausible else None
    rng = np.random.default_rng(seed)
    edited, swapped = [], []
    for image_captions in captions:
        row = []
        for caption in image_captions:
            if not isinstance(caption, str):
                raise TypeError(f"every caption must be a string, got {caption!r}")
            # The exchange draw happens only when asked for: exchange = 0 replays the earlier edits (and caches) exactly.
            counterfactual = exchange_colors(caption, rng, pairs) if exchange > 0 and rng.random() < exchange else None
            if counterfactual is None:
                counterfactual = counterfactual_caption(caption, rng, plausible=pairs, near_colors=near_colors)
            row.append(caption if counterfactual is None else counterfactual)
            swapped.append(counterfactual is not None)
        edited.append(row)
    return edited, swapped
