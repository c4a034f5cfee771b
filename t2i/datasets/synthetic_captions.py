"""Reed-style captions for synthetic flowers, and the reverse: which attribute values a caption states.

`make_captions` writes sentences that mention a random subset of an image's true attributes.
`caption_attributes` parses any caption of this kind (it works on clause structure and word lists, not
on the templates below), so tests and the evaluation oracle can check captions and prompts against the
recorded attributes.
"""

from __future__ import annotations

import re

import numpy as np

COLOR_WORDS = frozenset(
    ["red", "orange", "yellow", "pink", "magenta", "purple", "lavender", "blue", "turquoise", "white",
     "maroon", "peach", "brown", "black", "green"]
)
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "round": ("round", "rounded"),
    "oval": ("oval", "oval-shaped"),
    "pointed": ("pointed", "pointy"),
    "thin": ("thin", "narrow", "slender"),
    "heart": ("heart-shaped", "notched"),
}
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "edges": ("edges", "edged", "borders", "rims"),
    "stripes": ("stripes", "striped", "streaks"),
    "spots": ("spots", "spotted", "dots", "speckles"),
}
CENTER_NOUNS = ("center", "centre", "disc", "middle")
CENTER_SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "tiny"), "large": ("large", "big", "wide")}
COUNT_WORDS = ("three", "four", "five", "six", "several", "many")
LAYER_PHRASES: dict[int, tuple[str, ...]] = {
    1: ("in a single layer", "arranged in one layer", "in one layer"),
    2: ("in two layers", "arranged in two layers", "in a double layer"),
}

# Parser word classes. "flower" is a weak noun: a colour next to it is the petal colour, but in
# "the center of this flower is yellow" the colour belongs to the stronger noun "center".
_PETAL_NOUNS = frozenset(["petal", "petals"])
_WEAK_NOUNS = frozenset(["flower", "bloom", "blossom"])
_CENTER_NOUNS = frozenset(CENTER_NOUNS)
_PATTERN_OF = {word: pattern for pattern, words in PATTERN_WORDS.items() for word in words}
_SHAPE_OF = {word.split("-")[0]: shape for shape, words in SHAPE_WORDS.items() for word in words}
_SIZE_OF = {word: size for size, words in CENTER_SIZE_WORDS.items() for word in words}
_CLAUSE_BREAKS = frozenset(
    [",", "and", "with", "that", "which", "while", "but", "surrounding", "surrounded", "surround", "around"]
)
_MODIFIERS = ("", "", "", "bright ", "pale ", "deep ", "light ", "dark ")


def _noun_class(token: str) -> str | None:
    if token in _PETAL_NOUNS:
        return "petals"
    if token in _CENTER_NOUNS:
        return "center"
    if token in _PATTERN_OF:
        return "pattern"
    if token in _WEAK_NOUNS:
        return "flower"
    return None


def caption_attributes(caption: str) -> dict[str, set]:
    """Attribute values that `caption` states, as {attribute name: set of values}.

    Keys are the synthetic attribute names (petal_color, secondary_color, pattern, petal_shape,
    petal_count_word, center_color, center_size, num_layers); an attribute the caption does not mention
    is absent. A set with more than one value means the caption contradicts itself.
    """
    found: dict[str, set] = {}

    def add(key: str, value) -> None:
        found.setdefault(key, set()).add(value)

    tokens = re.findall(r"[a-z]+|,", caption.lower().replace("-", " "))
    for i, token in enumerate(tokens):
        if token in _SHAPE_OF:
            add("petal_shape", _SHAPE_OF[token])
        elif token in COUNT_WORDS:
            add("petal_count_word", token)
        elif token in ("layer", "layers", "rows") and i > 0:
            layers = {"single": 1, "one": 1, "two": 2, "double": 2}.get(tokens[i - 1])
            if layers is not None:
                add("num_layers", layers)
        if token in _PATTERN_OF:
            add("pattern", _PATTERN_OF[token])

    previous_noun: str | None = None  # a clause without a noun ("... that are pink") refers back to it
    for clause in _split_clauses(tokens):
        nouns = [(j, _noun_class(tok)) for j, tok in enumerate(clause) if _noun_class(tok)]
        for j, token in enumerate(clause):
            if token not in COLOR_WORDS and token not in _SIZE_OF:
                continue
            referent = _referent(clause, j, nouns) or previous_noun
            if token in _SIZE_OF:
                if referent == "center":
                    add("center_size", _SIZE_OF[token])
            elif referent == "pattern":
                add("secondary_color", token)
            elif referent == "center":
                add("center_color", token)
            elif referent in ("petals", "flower"):
                add("petal_color", token)
        if nouns:
            strong = [cls for _, cls in nouns if cls != "flower"]
            previous_noun = strong[-1] if strong else nouns[-1][1]
    return found


def _split_clauses(tokens: list[str]) -> list[list[str]]:
    clauses, current = [], []
    for token in tokens:
        if token in _CLAUSE_BREAKS:
            if current:
                clauses.append(current)
            current = []
        else:
            current.append(token)
    if current:
        clauses.append(current)
    return clauses


def _referent(clause: list[str], j: int, nouns: list[tuple[int, str]]) -> str | None:
    """The noun an adjective at position j describes: the next noun ("pink petals"), else the nearest
    strong noun before it ("the petals are pink"), else any noun before it."""
    if j + 1 < len(clause) and _noun_class(clause[j + 1]) == "pattern":
        return "pattern"
    after = [cls for k, cls in nouns if k > j]
    if after:
        return after[0]
    before = [cls for k, cls in nouns if k < j]
    strong = [cls for cls in before if cls != "flower"]
    if strong:
        return strong[-1]
    return before[-1] if before else None


# ----------------------------------------------------------------------------------------------------
# Generation

_FACT_WEIGHTS = {
    "petal_color": 3.0, "pattern": 2.0, "petal_shape": 2.0, "petal_count_word": 2.0,
    "center_color": 2.0, "center_size": 1.0, "num_layers": 1.0,
}
_OPENERS = (
    "this flower has", "a flower with", "the flower has", "this flower consists of", "this is a flower with", "this bloom has",
)


def _pick(rng: np.random.Generator, options) -> str:
    return options[rng.integers(len(options))]


def _color(rng: np.random.Generator, name: str) -> str:
    return name if name in ("white", "black") else _pick(rng, _MODIFIERS) + name


def _pattern_phrase(a: dict, rng: np.random.Generator) -> str:
    """E.g. "white edges", "purple spots"; the colour is left out now and then."""
    noun = _pick(rng, [w for w in PATTERN_WORDS[a["pattern"]] if not w.endswith("ed")])
    return noun if rng.random() < 0.15 else f"{a['secondary_color']} {noun}"


def _center_phrase(a: dict, facts: set[str], rng: np.random.Generator) -> str:
    words = []
    if "center_size" in facts:
        words.append(_pick(rng, CENTER_SIZE_WORDS[a["center_size"]]))
    if "center_color" in facts:
        words.append(_color(rng, a["center_color"]))
    return " ".join([*words, _pick(rng, CENTER_NOUNS)])


def _petal_phrase(a: dict, facts: set[str], rng: np.random.Generator, with_color: bool = True) -> str:
    words = []
    if "petal_count_word" in facts:
        words.append(a["petal_count_word"])
    if "petal_shape" in facts:
        words.append(_pick(rng, SHAPE_WORDS[a["petal_shape"]]))
    if with_color and "petal_color" in facts:
        words.append(_color(rng, a["petal_color"]))
    return " ".join([*words, "petals"])


def make_caption(a: dict, facts: set[str], rng: np.random.Generator) -> str:
    """One sentence stating exactly the facts in `facts` (a subset of the attribute names) about `a`."""
    petal_facts = facts & {"petal_color", "petal_shape", "petal_count_word", "pattern", "num_layers"}
    center_facts = facts & {"center_color", "center_size"}
    pattern = f" with {_pattern_phrase(a, rng)}" if "pattern" in facts else ""
    layers = f" {_pick(rng, LAYER_PHRASES[a['num_layers']])}" if "num_layers" in facts else ""
    center = _center_phrase(a, center_facts, rng) if center_facts else ""

    if not petal_facts:
        if center_facts == {"center_color"} and rng.random() < 0.5:
            return f"the {_pick(rng, CENTER_NOUNS)} of this flower is {_color(rng, a['center_color'])}"
        return f"{_pick(rng, _OPENERS)} a {center}"
    style = rng.integers(4)
    if style == 1 and "petal_color" in facts:  # "the petals are pink with white edges"
        subject = _petal_phrase(a, facts, rng, with_color=False)
        head = _pick(rng, (f"the {subject} are", f"the {subject} of this flower are", f"this flower has {subject} that are"))
        sentence = f"{head} {_color(rng, a['petal_color'])}{pattern}{layers}"
        if center_facts == {"center_color"}:
            return sentence + f" and the {_pick(rng, CENTER_NOUNS)} is {_color(rng, a['center_color'])}"
        return sentence + (f" and a {center}" if center else "")
    if style == 2 and "petal_color" in facts:  # "this pink flower has five pointed petals"
        color, petals = _color(rng, a["petal_color"]), _petal_phrase(a, facts, rng, with_color=False)
        if petals == "petals" and not (layers or pattern):
            return f"this is a {color} flower" + (f" with a {center}" if center else "")
        return f"this {color} flower has {petals}{layers}{pattern}" + (f" and a {center}" if center else "")
    if style == 3 and center:  # "a large brown disc surrounded by many thin yellow petals"
        return f"a {center} {_pick(rng, ('surrounded by', 'encircled by'))} {_petal_phrase(a, facts, rng)}{pattern}{layers}"
    sentence = f"{_pick(rng, _OPENERS)} {_petal_phrase(a, facts, rng)}{layers}{pattern}"
    if center:
        sentence += f" {_pick(rng, ('and a', 'surrounding a', 'around a'))} {center}"
    return sentence


def make_captions(attributes: dict, rng: np.random.Generator, n: int = 10) -> list[str]:
    """`n` varied captions, each stating a random non-empty subset of the true attributes."""
    names = [k for k in _FACT_WEIGHTS if k != "pattern" or attributes["pattern"] != "none"]
    weights = np.array([_FACT_WEIGHTS[k] for k in names])
    captions: list[str] = []
    for attempt in range(n * 10):
        size = min(len(names), 1 + rng.choice(4, p=[0.15, 0.35, 0.35, 0.15]))
        facts = set(rng.choice(names, size=size, replace=False, p=weights / weights.sum()).tolist())
        caption = make_caption(attributes, facts, rng)
        if caption not in captions or attempt >= n * 5:  # duplicates only when the variety runs out
            captions.append(caption)
        if len(captions) == n:
            break
    return captions
