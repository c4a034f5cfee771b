"""How often a counterfactual caption can be told from a real one by its text alone.

A counterfactual negative is useful to GAN-CLS's discriminator only if rejecting it takes looking at the image. An
edit that makes a word pair no training caption has ("black petals", "pale white") is false of every image, so D
can reject it from the text. For each kind of edit (word swaps; swaps with colour exchanges on), with and without
`--counterfactual_plausible`, and plausible swaps with `--counterfactual_near_colors 3`, this counts on the
training captions:

- `edited`: captions that get a counterfactual;
- `unseen_pair`: the share of counterfactuals with a word pair that no training caption has;
- `unseen_value` (synthetic set only): the share stating a value that no training image has for that attribute;
- `still_false`: the share whose stated values differ from the caption's own (each must be false of its image);
- `near_swap` (synthetic set only): of the counterfactuals that change one part's colour, the share whose new
  colour is one of the two nearest the old one in the renderer's palette for that part (the near colours a
  generator draws by mistake, `benchmarks/attribute_confusion.py`).

    python benchmarks/counterfactual_tells.py --dataset /work/data/synth --out tells.json
"""

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from t2i.cli import run_main
from t2i.data import caption_bigrams, counterfactual_captions, load_captioned_dataset
from t2i.data.counterfactual import nearest_colors
from t2i.datasets.synthetic_captions import caption_attributes
from t2i.datasets.synthetic_render import CENTER_PALETTE, PETAL_PALETTE

PALETTES = {"petal_color": PETAL_PALETTE, "center_color": CENTER_PALETTE, "secondary_color": PETAL_PALETTE}
ROWS = ((0.0, False, 0), (0.0, True, 0), (1.0, False, 0), (1.0, True, 0), (0.0, True, 3))  # (exchange, plausible, near_colors)


def _near_swap(counterfactuals: list[tuple[str, str]]) -> float:
    near = total = 0
    for caption, edited in counterfactuals:
        old, new = caption_attributes(caption), caption_attributes(edited)
        for name, palette in PALETTES.items():
            if len(old.get(name, ())) == len(new.get(name, ())) == 1 and old[name] != new[name]:
                (a,), (b,) = old[name], new[name]
                if a in palette and b in palette:
                    total += 1
                    near += b in nearest_colors(palette, a)
    return near / total if total else float("nan")


def tells(captions: list[list[str]], attributes: list[dict] | None, exchange: float, plausible: bool, near_colors: int = 0) -> dict:
    """The counts above for ``counterfactual_captions(captions, exchange=exchange, plausible=plausible,
    near_colors=near_colors)``."""
    real = caption_bigrams(c for row in captions for c in row)
    started = time.monotonic()
    edited, swapped = counterfactual_captions(captions, exchange=exchange, plausible=plausible, near_colors=near_colors)
    seconds = time.monotonic() - started
    pairs = [(c, e) for row, edited_row in zip(captions, edited) for c, e in zip(row, edited_row)]
    counterfactuals = [(c, e) for (c, e), s in zip(pairs, swapped) if s]
    result = {"exchange": exchange, "plausible": plausible, "near_colors": near_colors, "captions": len(pairs), "edited": len(counterfactuals),
              "unseen_pair": sum(not caption_bigrams([e]) <= real for _, e in counterfactuals) / len(counterfactuals),
              "still_false": sum(caption_attributes(c) != caption_attributes(e) for c, e in counterfactuals) / len(counterfactuals),
              "seconds": seconds}
    if attributes is not None:
        seen = defaultdict(set)
        for row in attributes:
            for name, value in row.items():
                seen[name].add(str(value))
        result["unseen_value"] = sum(any(str(v) not in seen[name] for name, values in caption_attributes(e).items() if name in seen
                                         for v in values) for _, e in counterfactuals) / len(counterfactuals)
        result["near_swap"] = _near_swap(counterfactuals)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    dataset = load_captioned_dataset(args.dataset, args.split)
    attributes = dataset["attributes"] if "attributes" in dataset.column_names else None
    results = [tells(dataset["captions"], attributes, *row) for row in ROWS]
    print("| edits | plausible | near colours | edited | unseen word pair | unseen value | near colour swaps | still false | seconds |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {'swaps + exchanges' if r['exchange'] else 'swaps'} | {r['plausible']} | {r['near_colors'] or 'any'} | "
              f"{r['edited']} / {r['captions']} | {r['unseen_pair']:.3f} | {r.get('unseen_value', float('nan')):.3f} | "
              f"{r.get('near_swap', float('nan')):.3f} | {r['still_false']:.3f} | {r['seconds']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps({"dataset": args.dataset, "split": args.split, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    run_main(main)
