import numpy as np
import pytest

from t2i.data import counterfactual_caption, counterfactual_captions, swap_stated_word
from t2i.data.counterfactual import SWAPPABLE_WORDS, exchange_colors
from t2i.datasets.synthetic import SPECIES
from t2i.datasets.synthetic_captions import caption_attributes, make_captions


def _words(caption: str) -> list[str]:
    return caption.replace(",", " ,").split()


def test_a_counterfactual_swaps_exactly_one_stated_value_for_one_the_caption_does_not_state():
    rng = np.random.default_rng(0)
    caption = "a yellow centre surrounded by six oval white petals"
    kinds = {"yellow": "color", "white": "color", "six": "count", "oval": "shape"}
    seen = set()
    for _ in range(200):
        edited = counterfactual_caption(caption, rng)
        changed = [(a, b) for a, b in zip(_words(caption), _words(edited)) if a != b]
        assert len(_words(edited)) == len(_words(caption)) and len(changed) == 1, edited
        (old, new), = changed
        kind = kinds[old]
        assert new in SWAPPABLE_WORDS[kind] and new not in _words(caption)
        seen.add(old)
        assert caption_attributes(edited) != caption_attributes(caption)  # the edit states another value
    assert seen == set(kinds)  # every swappable word gets swapped
    # Kinds are drawn uniformly first: the one count word is swapped about a third of the time, not a quarter.
    counts = sum(counterfactual_caption(caption, np.random.default_rng(i)).split()[5] != "six" for i in range(600))
    assert 150 < counts < 250


def test_counterfactuals_keep_case_and_hyphenated_words_and_refuse_captions_without_values():
    rng = np.random.default_rng(1)
    for _ in range(20):
        edited = counterfactual_caption("Pink heart-shaped petals", rng)
        assert edited.endswith(" heart-shaped petals") and edited.split()[0][0].isupper() and edited.split()[0] != "Pink"
    for caption in ("a rose", "", "surrounded by nothing", "oval-shaped petals", "🌸🌸"):
        assert counterfactual_caption(caption, rng) is None
    assert counterfactual_caption("five petals", rng, kinds=("color",)) is None
    with pytest.raises(ValueError, match="kinds must be a subset"):
        counterfactual_caption("five petals", rng, kinds=("size",))


def test_swap_stated_word_edits_the_one_named_value():
    rng = np.random.default_rng(2)
    edited = swap_stated_word("a brown centre with brownish yellow petals", "brown", rng)
    assert edited.startswith("a ") and edited.endswith(" centre with brownish yellow petals") and "brown " not in edited
    assert caption_attributes(edited)["center_color"] - {"brown", "yellow"}
    assert swap_stated_word("yellow petals and a yellow centre", "yellow", rng) is None  # which one? ambiguous
    assert swap_stated_word("yellow petals", "petals", rng) is None  # not a value word
    assert swap_stated_word("yellow petals", "red", rng) is None  # not in the caption


def test_counterfactual_captions_cover_a_dataset_deterministically():
    rng = np.random.default_rng(0)
    captions = [make_captions(SPECIES[i].sample_attributes(rng), rng) for i in range(5)] + [["a rose", "a flower"]]
    edited, swapped = counterfactual_captions(captions, seed=3)
    again, _ = counterfactual_captions(captions, seed=3)
    other, _ = counterfactual_captions(captions, seed=4)
    assert edited == again and edited != other
    assert [len(row) for row in edited] == [len(row) for row in captions]
    flat = [c for row in captions for c in row]
    flat_edited = [c for row in edited for c in row]
    assert len(swapped) == len(flat) and swapped[-2:] == [False, False]
    for caption, counterfactual, was_swapped in zip(flat, flat_edited, swapped):
        assert (caption != counterfactual) == was_swapped
    assert sum(swapped[:-2]) >= 0.85 * (len(flat) - 2)  # most synthetic captions state a colour, count or shape


@pytest.mark.parametrize("caption", [
    "the petals are not red", "a flower with no yellow centre", "petals aren't red",  # a negation: the swap stays true
    "between four and six petals", "three to five petals",  # a range of counts
    "a red flower with red petals", "red red red", "slender, narrow, thin petals",  # a value stated twice
])
def test_no_counterfactual_where_a_swap_could_leave_the_caption_true(caption):
    rng = np.random.default_rng(0)
    assert all(counterfactual_caption(caption, rng) is None for _ in range(20))


def test_counterfactuals_keep_upper_case_and_refuse_sloppy_arguments():
    rng = np.random.default_rng(3)
    assert counterfactual_caption("RED PETALS", rng).endswith(" PETALS") and counterfactual_caption("RED PETALS", rng).split()[0].isupper()
    with pytest.raises(TypeError, match="not the string 'color'"):
        counterfactual_caption("red petals", rng, kinds="color")
    with pytest.raises(TypeError, match="one list of captions per image"):
        counterfactual_captions(["red petals"])


def test_a_colour_exchange_keeps_every_value_and_swaps_which_part_has_it():
    rng = np.random.default_rng(0)
    assert exchange_colors("this is a flower with six white petals with red edges", rng) == "this is a flower with six red petals with white edges"
    assert exchange_colors("The petals are Pink and the centre is WHITE", rng) == "The petals are White and the centre is PINK"
    # Three colours: every pair of different parts is drawn, and each edit states the same three values.
    caption = "a dark red centre surrounded by light lavender petals with orange dots"
    edits = {exchange_colors(caption, rng) for _ in range(60)}
    assert len(edits) == 3 and caption not in edits
    assert all(sorted(_words(e)) == sorted(_words(caption)) for e in edits)
    # On the synthetic captions an exchange states a value of another part, so it is false of the image.
    rng = np.random.default_rng(1)
    for species in SPECIES[:20]:
        attributes = species.sample_attributes(rng)
        for caption in make_captions(attributes, rng):
            edited = exchange_colors(caption, rng)
            if edited is not None:
                assert caption_attributes(edited) != caption_attributes(caption), (caption, edited)


@pytest.mark.parametrize("caption", [
    "this flower is white and yellow in color", "pink, white petals", "petals from red to orange",  # unordered colours
    "red petals", "red petals and a red centre",  # fewer than two distinct colours
    "not red petals with a white centre",  # a negation
])
def test_no_colour_exchange_where_the_order_of_the_colours_states_nothing(caption):
    rng = np.random.default_rng(0)
    assert all(exchange_colors(caption, rng) is None for _ in range(20))


def test_counterfactual_captions_exchange_colours_with_the_asked_probability():
    rng = np.random.default_rng(0)
    captions = [make_captions(SPECIES[i].sample_attributes(rng), rng) for i in range(30)]
    plain, swapped = counterfactual_captions(captions, seed=3)
    assert counterfactual_captions(captions, seed=3, exchange=0.0) == (plain, swapped)  # 0 replays the earlier edits exactly
    exchanged, swapped_all = counterfactual_captions(captions, seed=3, exchange=1.0)
    assert swapped_all == swapped  # an exchange is only taken where the caption has one; otherwise a word is replaced
    flat = [c for row in captions for c in row]
    kinds = [sorted(_words(e)) == sorted(_words(c)) for c, e in zip(flat, (e for row in exchanged for e in row))]
    possible = [exchange_colors(c, np.random.default_rng(0)) is not None for c in flat]
    assert sum(possible) > 20 and [k for k, p in zip(kinds, possible) if p] == [True] * sum(possible)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="exchange must be a probability"):
            counterfactual_captions(captions, exchange=bad)
    for bad in ("0.5", True, None):
        with pytest.raises(TypeError, match="exchange must be a number"):
            counterfactual_captions(captions, exchange=bad)
    for bad in ([[None]], [["red petals", 5]]):
        with pytest.raises(TypeError, match="every caption must be a string"):
            counterfactual_captions(bad, exchange=0.5)
    with pytest.raises(TypeError, match="caption must be a string"):
        exchange_colors(None, np.random.default_rng(0))
