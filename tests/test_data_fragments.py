"""Caption fragments (t2i.data.fragments): short true texts for GAN-CLS, drawn reproducibly."""

import numpy as np
import pytest

from t2i.data import caption_fragment, caption_fragments

CAPTION = "this flower has five pointed purple petals, and a yellow center."


def test_a_fragment_is_a_span_of_one_to_max_words_consecutive_words():
    rng = np.random.default_rng(0)
    words = CAPTION.replace(",", "").replace(".", "").split()
    spans = [" ".join(words[i : i + n]) for n in range(1, 5) for i in range(len(words) - n + 1)]
    fragments = [caption_fragment(CAPTION, rng) for _ in range(400)]
    assert all(fragment.replace(",", "") in spans for fragment in fragments)  # a comma inside a span stays
    assert {len(fragment.split()) for fragment in fragments} == {1, 2, 3, 4}
    assert not any(fragment[-1] in ",." for fragment in fragments)  # no punctuation left at the ends
    assert {caption_fragment("purple", rng) for _ in range(10)} == {"purple"}
    assert {len(caption_fragment(CAPTION, rng, max_words=2).split()) for _ in range(100)} == {1, 2}


@pytest.mark.parametrize("caption", ["", "   ", "...", ", .", "… …", "🌸🌸", "no petals", "not red"])
def test_a_caption_with_no_words_is_its_own_fragment(caption):
    assert caption_fragment(caption, np.random.default_rng(0)) == caption


def test_a_fragment_never_starts_after_a_negation_or_keeps_symbols_at_its_edges():
    rng = np.random.default_rng(0)
    for caption, allowed in (("this flower has no yellow petals", {"this", "flower", "has"}),
                             ("petals that aren't yellow", {"petals", "that"}),
                             ("a red flower, without spots", {"a", "red", "flower"})):
        assert all(set(caption_fragment(caption, rng).replace(",", "").split()) <= allowed for _ in range(100))
    caption = "“quoted words” 🌸🌸 « fleur »"
    fragments = {caption_fragment(caption, rng) for _ in range(200)} - {caption}  # a span of symbols only gives the caption
    assert {"quoted", "words", "fleur"} <= fragments and not any(f[0] in "“”«»🌸" or f[-1] in "“”«»🌸" for f in fragments)


def test_fragments_of_a_dataset_are_one_per_caption_and_seeded():
    captions = [[CAPTION, "a red flower"], ["the petals are white"]]
    fragments = caption_fragments(captions)
    assert [len(row) for row in fragments] == [2, 1]
    assert fragments == caption_fragments(captions)  # every run on a dataset shares one cached encoding
    assert any(caption_fragments(captions * 20, seed=1)[i] != caption_fragments(captions * 20)[i] for i in range(40))
    for row, originals in zip(fragments, captions):
        assert all(set(f.replace(",", "").split()) <= set(o.replace(",", "").replace(".", "").split()) for f, o in zip(row, originals))


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="one list of captions per image"):
        caption_fragments(["a red flower"])
    for max_words in (0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="max_words must be an integer ≥ 1"):
            caption_fragment(CAPTION, np.random.default_rng(0), max_words=max_words)
    with pytest.raises(TypeError, match="a caption must be a string, got NoneType"):
        caption_fragments([[None]])
