"""What a generator can read off a caption: linear probes of text embeddings, per attribute, on unseen classes.

    python benchmarks/text_encoder_probe.py --dataset /tmp/synth_full \
        --encoder "DS-SJE=runs/te/char_cnn_rnn" --encoder "MiniLM=sentence-transformers/all-MiniLM-L6-v2" \
        --out benchmarks/results/text_encoder_probe.json
    python benchmarks/text_encoder_probe.py --dataset /work/data/synth --encoder "v9=pretrained" --generator_code \
        --out benchmarks/results/text_code_probe_v9.json

For each text encoder, a logistic-regression probe per attribute is trained on the embeddings of train-split
captions that state the attribute, and scored on test-split captions: the 20 classes whose attribute combinations
no caption of the train split describes. The generator sees nothing but the embedding, so an attribute the probe
cannot read off an unseen caption is one the generator cannot be expected to draw. Synthetic captioned flowers only
(the attributes come from the captions, parsed with `t2i.datasets.caption_attributes`).

With `--generator_code`, an encoder given as a pipeline folder is probed twice: its embeddings, and the text code its
generator computes from them (`GanClsGenerator.text_code`, what the generator's layers see), so a loss between the
two is the generator's projection, not its encoder. Each attribute also gets per-value accuracies and what each value
is read as (`per_value`), since one value can fail where the mean looks fine.
"""

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2i import GanClsPipeline, TextEncoder  # noqa: E402
from t2i.data import load_captioned_dataset  # noqa: E402
from t2i.datasets import caption_attributes  # noqa: E402

ATTRIBUTES = ("petal_color", "center_color", "petal_count_word", "petal_shape", "secondary_color")


def load_encoder(name_or_path: str) -> TextEncoder:
    """A text encoder folder or id, or the text encoder of a saved pipeline folder."""
    if (Path(name_or_path) / "model_index.json").is_file():
        pipeline = GanClsPipeline.from_pretrained(name_or_path)
        return TextEncoder(pipeline.tokenizer, pipeline.text_encoder)
    return TextEncoder.from_pretrained(name_or_path)


def sample_captions(dataset, count: int, generator: torch.Generator) -> list[str]:
    """`count` captions of the split, all captions of images in a seeded random order."""
    order = torch.randperm(len(dataset), generator=generator).tolist()
    captions = dataset["captions"]
    return [caption for i in order for caption in captions[i]][:count]


def probe_predictions(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, classes: int) -> tuple[float, torch.Tensor]:
    """Train accuracy of a logistic-regression probe on standardised embeddings (full batch, Adam, seeded), and its
    predicted class of each test row."""
    torch.manual_seed(0)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    probe = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(500):
        loss = F.cross_entropy(probe((train_x - mean) / std), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        train_accuracy = (probe((train_x - mean) / std).argmax(1) == train_y).float().mean().item()
        return train_accuracy, probe((test_x - mean) / std).argmax(1)


def per_value(true: list[str], predicted: list[str]) -> dict:
    """For each true value: its number of rows, the share read right and what it was read as (most common first)."""
    rows = {}
    for value in sorted(set(true)):
        read = [p for t, p in zip(true, predicted) if t == value]
        rows[value] = {"captions": len(read), "right": sum(p == value for p in read) / len(read),
                       "read_as": dict(collections.Counter(read).most_common())}
    return rows


def probe_attributes(train: list[str], test: list[str], train_x: torch.Tensor, test_x: torch.Tensor) -> dict:
    """Per attribute: the probe's train and unseen-class accuracy, and its per-value readings of the test captions.
    An attribute that no train or no test caption states is left out."""
    results = {}
    for attribute in ATTRIBUTES:
        (train_rows, train_values), (test_rows, test_values) = stated(train, attribute), stated(test, attribute)
        if not train_rows or not test_rows:
            continue
        vocabulary = sorted(set(train_values) | set(test_values))
        index = {value: i for i, value in enumerate(vocabulary)}
        train_accuracy, predicted = probe_predictions(
            train_x[train_rows], torch.tensor([index[v] for v in train_values]), test_x[test_rows], len(vocabulary))
        predicted_values = [vocabulary[i] for i in predicted.tolist()]
        results[attribute] = {
            "train": train_accuracy, "test_classes": sum(p == t for p, t in zip(predicted_values, test_values)) / len(test_values),
            "test_captions": len(test_rows), "values": len(vocabulary), "per_value": per_value(test_values, predicted_values),
        }
    return results


def stated(captions: list[str], attribute: str) -> tuple[list[int], list[str]]:
    """Rows of the captions that state `attribute` (one value), and that value."""
    rows, values = [], []
    for i, caption in enumerate(captions):
        found = caption_attributes(caption).get(attribute)
        if found and len(found) == 1:
            rows.append(i)
            values.append(str(next(iter(found))))
    return rows, values


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--encoder", action="append", required=True, help="NAME=FOLDER_OR_ID (a pipeline folder works too), repeatable")
    parser.add_argument("--train_captions", type=int, default=12000)
    parser.add_argument("--test_captions", type=int, default=4000)
    parser.add_argument("--generator_code", action="store_true",
                        help="for a pipeline folder, also probe the generator's text code (GanClsGenerator.text_code)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(0)
    train = sample_captions(load_captioned_dataset(args.dataset, "train"), args.train_captions, generator)
    test = sample_captions(load_captioned_dataset(args.dataset, "test"), args.test_captions, generator)
    results = []
    for spec in args.encoder:
        name, _, path = spec.partition("=")
        encoder = load_encoder(path)
        started = time.perf_counter()
        train_embeds, test_embeds = encoder.encode(train), encoder.encode(test)
        probed = [(name, train_embeds, test_embeds, time.perf_counter() - started)]
        if args.generator_code and (Path(path) / "model_index.json").is_file():
            generator_model = GanClsPipeline.from_pretrained(path).generator.eval()
            started = time.perf_counter()
            with torch.no_grad():
                codes = generator_model.text_code(train_embeds)[0], generator_model.text_code(test_embeds)[0]
            probed.append((f"{name}: generator text code", *codes, probed[0][3] + time.perf_counter() - started))
        for row_name, train_x, test_x, seconds in probed:  # seconds: encoding the captions (and computing the codes)
            row = {"name": row_name, "encoder": path, "dim": train_x.shape[1], "encode_seconds": seconds,
                   "attributes": probe_attributes(train, test, train_x, test_x)}
            results.append(row)
            print(f"{row_name}: " + ", ".join(f"{a} {row['attributes'][a]['test_classes']:.3f}" for a in row["attributes"]), flush=True)

    header = "| text encoder | dim | " + " | ".join(ATTRIBUTES) + " |"
    lines = [header, "|---|---|" + "---|" * len(ATTRIBUTES)]
    for row in results:
        lines.append(f"| {row['name']} | {row['dim']} | " + " | ".join(f"{row['attributes'][a]['test_classes']:.3f}" if a in row["attributes"] else "n/a" for a in ATTRIBUTES) + " |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"dataset": args.dataset, "train_captions": len(train), "test_captions": len(test), "encoders": results}, indent=2))
        Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main()
