"""Which stated values a model misses, and what it draws instead: per attribute and stated value, the oracle's
reading of the images generated for the test captions that state it (the captions and seeds of
`python -m t2i.evaluation`, so the per-value rates add up to its agreement numbers).

    python benchmarks/attribute_confusion.py --model pretrained --dataset /work/data/synth --out confusion.json
"""

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import torch

from t2i import GanClsPipeline
from t2i.data import load_captioned_dataset
from t2i.datasets.synthetic_captions import caption_attributes
from t2i.evaluation import load_oracle
from t2i.evaluation.metrics import _generate

ATTRIBUTES = ("petal_color", "center_color", "petal_count_word", "secondary_color", "petal_shape")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    test = load_captioned_dataset(args.dataset, "test")
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
    report = {}
    for attribute in ATTRIBUTES:
        read = defaultdict(Counter)
        for i, caption in enumerate(captions):
            stated = caption_attributes(caption).get(attribute)
            if stated and len(stated) == 1:
                read[str(next(iter(stated)))][values[attribute][int(predictions[attribute][i])]] += 1
        print(f"\n{attribute}\n| stated | captions | right | most often read instead |\n|---|---|---|---|")
        report[attribute] = {}
        for value in values[attribute]:
            if value in read:
                total = sum(read[value].values())
                wrong = [(v, n) for v, n in read[value].most_common() if v != value][:3]
                report[attribute][value] = {"captions": total, "right": read[value][value] / total, "read_as": dict(read[value])}
                print(f"| {value} | {total} | {read[value][value] / total:.2f} | " + ", ".join(f"{v} {n}" for v, n in wrong) + " |")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "num_samples": args.num_samples, "seed": args.seed, **report}, indent=2))


if __name__ == "__main__":
    main()
