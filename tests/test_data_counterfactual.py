import numpy as np
import pytest

from t2i.data import caption_bigrams, counterfactual_caption, counterfactual_captions, swap_stated_word
from t2i.data.counterfactual import COLOR_RGB, SWAPPABLE_WORDS, exchange_colors, nearest_colors
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


def test_caption_bigrams_are_the_adjacent_word_pairs_hyphens_split():
    assert caption_bigrams(["Pink petals", "heart-shaped petals, a RED centre"]) == {
        ("pink", "petals"), ("heart", "shaped"), ("shaped", "petals"), ("petals", "a"), ("a", "red"), ("red", "centre")}
    assert caption_bigrams([]) == frozenset() and caption_bigrams(["rose"]) == frozenset()
    with pytest.raises(TypeError, match="not the string"):
        caption_bigrams("pink petals")
    with pytest.raises(TypeError, match="must be a string"):
        caption_bigrams(["pink petals", None])


def test_a_plausible_counterfactual_makes_only_word_pairs_the_data_has():
    # The data puts pink, white and lavender on petals, black and yellow on centres: "black petals" is never a
    # plausible petal edit, and the centre's colour may only become yellow.
    data = ["a flower with pink petals and a black center", "a flower with white petals and a yellow center",
            "a flower with lavender petals", "a flower with six petals", "a flower with five petals"]
    pairs = caption_bigrams(data)
    caption = "a flower with pink petals and a black center"
    drawn = {counterfactual_caption(caption, np.random.default_rng(i), plausible=pairs) for i in range(300)}
    assert drawn == {"a flower with white petals and a black center", "a flower with lavender petals and a black center",
                     "a flower with pink petals and a yellow center"}
    assert all(counterfactual_caption(caption, np.random.default_rng(i), kinds=("count",), plausible=pairs) is None for i in range(5))
    assert counterfactual_caption("a flower with six petals", np.random.default_rng(0), plausible=pairs) == "a flower with five petals"
    # With no plausible replacement for any word, there is no counterfactual rather than an implausible one.
    assert counterfactual_caption("pink petals", np.random.default_rng(0), plausible=caption_bigrams(["pink petals"])) is None
    # An exchange must fit at both places.
    edges = caption_bigrams(["white petals with red edges", "red petals with white spots"])
    assert exchange_colors("pink petals with red edges", np.random.default_rng(0), edges) is None  # "with pink" never occurs
    edges |= caption_bigrams(["yellow petals with pink edges"])
    assert exchange_colors("pink petals with red edges", np.random.default_rng(0), edges) == "red petals with pink edges"


def test_plausible_counterfactuals_of_synthetic_captions_keep_to_their_word_pairs_and_stay_false():
    rng = np.random.default_rng(0)
    captions = [make_captions(SPECIES[i % len(SPECIES)].sample_attributes(rng), rng) for i in range(60)]
    pairs = caption_bigrams(c for row in captions for c in row)
    default, _ = counterfactual_captions(captions, seed=1)
    assert counterfactual_captions(captions, seed=1, plausible=False)[0] == default  # off: the same edits as before
    for exchange in (0.0, 1.0):
        edited, swapped = counterfactual_captions(captions, seed=1, exchange=exchange, plausible=True)
        flat, flat_edited = [c for row in captions for c in row], [c for row in edited for c in row]
        assert sum(swapped) >= 0.85 * len(flat)
        for caption, counterfactual, was_swapped in zip(flat, flat_edited, swapped):
            if was_swapped:
                assert caption_bigrams([counterfactual]) <= pairs, counterfactual
                assert caption_attributes(counterfactual) != caption_attributes(caption)
    # Without the filter some edits do make pairs no caption has: the option changes something.
    assert any(not caption_bigrams([c]) <= pairs for row in default for c in row)


def test_near_colors_swaps_a_colour_only_for_its_nearest_allowed_colours():
    assert set(SWAPPABLE_WORDS["color"]) <= set(COLOR_RGB)  # every colour word has a value to measure from
    assert nearest_colors(COLOR_RGB, "yellow", 2) == ["orange", "peach"]  # CSS sRGB, not the renderer's palette
    assert nearest_colors(COLOR_RGB, "yellow", 1, among=["blue", "white"]) == ["white"]
    caption = "a flower with yellow petals"
    assert {counterfactual_caption(caption, np.random.default_rng(i), near_colors=1) for i in range(20)} == {"a flower with orange petals"}
    assert {counterfactual_caption(caption, np.random.default_rng(i), near_colors=2) for i in range(40)} == {
        "a flower with orange petals", "a flower with peach petals"}
    # The nearest are drawn among the allowed replacements: orange is stated already, so peach and pink.
    two = "orange stripes on yellow petals"
    assert {counterfactual_caption(two, np.random.default_rng(i), kinds=("color",), near_colors=2) for i in range(60)} >= {
        "orange stripes on peach petals", "orange stripes on pink petals"}
    # Counts and shapes are unaffected; 0 means any colour, the default.
    assert counterfactual_caption("a flower with six petals", np.random.default_rng(0), near_colors=1) == \
        counterfactual_caption("a flower with six petals", np.random.default_rng(0))
    assert {counterfactual_caption(caption, np.random.default_rng(i), near_colors=0) for i in range(200)} > {
        "a flower with orange petals", "a flower with peach petals"}


@pytest.mark.parametrize("near_colors, error", [(-1, ValueError), ("3", TypeError), (True, TypeError), (1.5, TypeError)])
def test_near_colors_must_be_a_non_negative_integer(near_colors, error):
    with pytest.raises(error, match="near_colors"):
        counterfactual_caption("red petals", np.random.default_rng(0), near_colors=near_colors)
    with pytest.raises(error, match="near_colors"):
        counterfactual_captions([["red petals"]], near_colors=near_colors)


def test_counterfactuals_refuse_what_is_not_a_caption_or_a_flag():
    with pytest.raises(TypeError, match="caption must be a string"):
        counterfactual_caption(None, np.random.default_rng(0))
    with pytest.raises(TypeError, match="plausible must be True or False"):
        counterfactual_captions([["red petals"]], plausible="no")
