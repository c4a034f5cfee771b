"""Which stated values a model misses, and what it draws instead: per attribute and stated value, the oracle's
reading of the images generated for the test captions that state it (the captions and seeds of
`python -m t2i.evaluation`, so the per-value rates add up to its agreement numbers).

For each attribute it also asks whether the misses are memorised combinations: a wrong reading is *seen* when
some training class has that value together with every other value the caption states (a caption stating pink
petals and a white centre, drawn with yellow petals, where a training class has yellow petals and a white centre).
`seen_share` is the share of misses that are seen; `seen_share_by_chance` is what misses spread uniformly over
the other values would give (the mean, over misses, of the seen share of the other values). A `seen_share` well
above chance says the generator falls back on the combinations it was trained on. `bound_share` (colours only)
is the share of misses drawn in a colour the caption states for another part (white petals with yellow streaks,
drawn yellow): a binding error, against `bound_share_by_chance` likewise. `neighbour_share` (colours only) is the
share drawn in one of the two colours nearest the stated one in the renderer's palette, among the oracle's
values (yellow → orange or peach): a
colour drawn imprecisely, against 2 / (values − 1) by chance.

Then, per test class (an unseen combination), how often each stated attribute is right, beside the class's true
values, and petal colour over the classes with a coloured pattern (edges, stripes, spots) against those without:
where the misses sit.

    python benchmarks/attribute_confusion.py --model pretrained --dataset data/synthetic-flowers --out confusion.json
"""

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import torch

from t2i import GanClsPipeline
from t2i.cli import run_main
from t2i.data import load_captioned_dataset
from t2i.data.counterfactual import nearest_colors
from t2i.datasets.synthetic_captions import caption_attributes
from t2i.datasets.synthetic_render import CENTER_PALETTE, PETAL_PALETTE
from t2i.evaluation import load_oracle
from t2i.evaluation.metrics import _generate

ATTRIBUTES = ("petal_color", "center_color", "petal_count_word", "secondary_color", "petal_shape")
COLOR_ATTRIBUTES = ("petal_color", "center_color", "secondary_color")
TRUE_VALUES = ("petal_color", "center_color", "secondary_color", "pattern", "petal_shape", "petal_count")
PALETTES = {"petal_color": PETAL_PALETTE, "center_color": CENTER_PALETTE, "secondary_color": PETAL_PALETTE}


def seen_combinations(attribute_rows) -> set[frozenset]:
    """The (attribute, value) combinations of the training classes, as frozensets of pairs over `ATTRIBUTES`."""
    return {frozenset((name, str(row[name])) for name in ATTRIBUTES if row.get(name) is not None) for row in attribute_rows}


def seen_values(stated: dict[str, set], attribute: str, seen: set[frozenset]) -> set[str]:
    """Values of `attribute` that some seen combination holds together with every other single value `stated`."""
    others = {(name, str(next(iter(v)))) for name, v in stated.items() if name != attribute and name in ATTRIBUTES and len(v) == 1}
    return {value for combination in seen if others <= combination for name, value in combination if name == attribute}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved pipeline: folder or Hub repo id")
    parser.add_argument("--dataset", required=True, help="the synthetic captioned-flowers set (python -m t2i.datasets synth)")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=2000,
                        help="test captions, one image each, as python -m t2i.evaluation draws them (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="the draw of captions and noise (default: 0)")
    parser.add_argument("--out", type=Path, help="write the tables' numbers here as JSON")
    args = parser.parse_args()
    test = load_captioned_dataset(args.dataset, "test")
    seen = seen_combinations(load_captioned_dataset(args.dataset, "train")["attributes"])
    pipeline = GanClsPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    oracle, _ = load_oracle(None)
    # The draw of t2i.evaluation.metrics.evaluate_pipeline: test images in seeded random order, one caption each.
    rng = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(len(test), generator=rng) for _ in range(math.ceil(args.num_samples / len(test)))])[: args.num_samples]
    all_captions = test["captions"]
    captions = [all_captions[i][int(torch.randint(len(all_captions[i]), (1,), generator=rng))] for i in order.tolist()]
    embeds = torch.cat([pipeline.encode_prompt(captions[s : s + 250]) for s in range(0, len(captions), 250)])
    predictions, _ = oracle.predict(_generate(pipeline, embeds, [args.seed * 1_000_003 + i for i in range(len(captions))], 250))
    values = oracle.config.attribute_values
    labels, class_attributes = list(test["label"]), list(test["attributes"])
    by_class = defaultdict(lambda: defaultdict(lambda: [0, 0]))  # label → attribute → [right, stated]
    report = {}
    for attribute in ATTRIBUTES:
        read = defaultdict(Counter)
        misses = seen_misses = bound_misses = neighbour_misses = 0
        chance = bound_chance = 0.0
        for i, caption in enumerate(captions):
            stated_all = caption_attributes(caption)
            stated = stated_all.get(attribute)
            if stated and len(stated) == 1:
                value, drawn = str(next(iter(stated))), values[attribute][int(predictions[attribute][i])]
                read[value][drawn] += 1
                tally = by_class[labels[int(order[i])]][attribute]
                tally[0], tally[1] = tally[0] + (drawn == value), tally[1] + 1
                if drawn != value:
                    fallbacks = seen_values(stated_all, attribute, seen) - {value}
                    misses += 1
                    seen_misses += drawn in fallbacks
                    chance += len(fallbacks) / (len(values[attribute]) - 1)
                    other_colors = {str(c) for name in COLOR_ATTRIBUTES if name != attribute for c in stated_all.get(name, ())} - {value}
                    other_colors &= set(values[attribute])
                    bound_misses += drawn in other_colors
                    bound_chance += len(other_colors) / (len(values[attribute]) - 1)
                    palette = {c: rgb for c, rgb in PALETTES.get(attribute, {}).items() if c in values[attribute]}
                    neighbour_misses += value in palette and drawn in nearest_colors(palette, value)
        print(f"\n{attribute}\n| stated | captions | right | most often read instead |\n|---|---|---|---|")
        report[attribute] = {"misses": misses, "seen_share": seen_misses / misses if misses else math.nan,
                             "seen_share_by_chance": chance / misses if misses else math.nan}
        if attribute in COLOR_ATTRIBUTES:
            report[attribute].update(bound_share=bound_misses / misses if misses else math.nan,
                                     bound_share_by_chance=bound_chance / misses if misses else math.nan,
                                     neighbour_share=neighbour_misses / misses if misses else math.nan,
                                     neighbour_share_by_chance=2 / (len(values[attribute]) - 1))
        print(f"misses: {misses}, seen combinations: {report[attribute]['seen_share']:.2f} "
              f"(by chance {report[attribute]['seen_share_by_chance']:.2f})"
              + (f", another part's stated colour: {report[attribute]['bound_share']:.2f} (by chance "
                 f"{report[attribute]['bound_share_by_chance']:.2f}), one of the two nearest in the palette: "
                 f"{report[attribute]['neighbour_share']:.2f} (by chance {report[attribute]['neighbour_share_by_chance']:.2f})"
                 if attribute in COLOR_ATTRIBUTES else ""))
        for value in values[attribute]:
            if value in read:
                total = sum(read[value].values())
                wrong = [(v, n) for v, n in read[value].most_common() if v != value][:3]
                report[attribute][value] = {"captions": total, "right": read[value][value] / total, "read_as": dict(read[value])}
                print(f"| {value} | {total} | {read[value][value] / total:.2f} | " + ", ".join(f"{v} {n}" for v, n in wrong) + " |")
    report["by_class"] = {}
    print(f"\nby test class\n| class | {' / '.join(TRUE_VALUES)} | {' | '.join(ATTRIBUTES)} |\n|---|---|{'---|' * len(ATTRIBUTES)}")
    for label in sorted(by_class):
        truth = class_attributes[labels.index(label)]
        rates = {a: by_class[label][a][0] / by_class[label][a][1] for a in ATTRIBUTES if by_class[label][a][1]}
        report["by_class"][str(label)] = {"attributes": truth, "right": rates, "captions": {a: by_class[label][a][1] for a in rates}}
        shown = " / ".join(str(truth[name]) for name in TRUE_VALUES)
        print(f"| {label} | {shown} | " + " | ".join(f"{rates[a]:.2f}" if a in rates else "–" for a in ATTRIBUTES) + " |")
    for patterned in (True, False):
        tallies = [by_class[label]["petal_color"] for label in by_class if (class_attributes[labels.index(label)]["pattern"] != "none") == patterned]
        right, stated = sum(t[0] for t in tallies), sum(t[1] for t in tallies)
        name = "patterned" if patterned else "plain"
        report[f"petal_color_{name}_classes"] = {"classes": len(tallies), "captions": stated, "right": right / stated if stated else math.nan}
        print(f"petal colour on the {len(tallies)} {name} classes: {right / stated:.3f} of {stated} captions")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "num_samples": args.num_samples, "seed": args.seed, **report}, indent=2))


if __name__ == "__main__":
    run_main(main)
