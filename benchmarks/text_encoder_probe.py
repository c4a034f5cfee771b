"""What a generator can read off a caption: linear probes of text embeddings, per attribute, on unseen classes.

    python benchmarks/text_encoder_probe.py --dataset data/synthetic-flowers \
        --encoder "DS-SJE=runs/te/char_cnn_rnn" --encoder "MiniLM=sentence-transformers/all-MiniLM-L6-v2" \
        --out benchmarks/results/text_encoder_probe.json
    python benchmarks/text_encoder_probe.py --dataset data/synthetic-flowers --encoder "v9=pretrained" --generator_code \
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

With `--pooling attention`, each encoder is probed on what it holds per position before it pools
(`t2i.text_encoders.token_features`: the char-CNN-RNN's 18 RNN states, a transformer's token states), read by an
attention-pooling probe per attribute (4 learned queries, a softmax over the positions, then a linear layer; Adam on
minibatches, seeded): whether a conditioning that attends over the caption could read what the pooled embedding
mixes, such as which part a colour belongs to.

    python benchmarks/text_encoder_probe.py --dataset data/synthetic-flowers --encoder "v10=pretrained" \
        --encoder "MiniLM=sentence-transformers/all-MiniLM-L6-v2" --pooling attention --out benchmarks/results/token_probe.json
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
from t2i.cli import named_path, run_main
from t2i.text_encoders import token_features  # noqa: E402
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


class Tokens:
    """Per-position features [N, T, D] with their mask [N, T], indexed by rows like a tensor."""

    def __init__(self, features: torch.Tensor, mask: torch.Tensor):
        self.features, self.mask = features, mask
        self.shape = (features.shape[0], features.shape[2])  # rows and feature size, as the table reports them

    def __getitem__(self, rows) -> "Tokens":
        return Tokens(self.features[rows], self.mask[rows])

    def __len__(self) -> int:
        return len(self.features)


def encode_tokens(encoder: TextEncoder, texts: list[str], batch_size: int = 256) -> Tokens:
    """`token_features` of every caption, padded to one length across batches."""
    chunks = [token_features(encoder.tokenizer, encoder.model, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    length = max(features.shape[1] for features, _ in chunks)
    return Tokens(torch.cat([F.pad(f, (0, 0, 0, length - f.shape[1])) for f, _ in chunks]).cpu(),
                  torch.cat([F.pad(m, (0, length - m.shape[1])) for _, m in chunks]).cpu())


def attention_probe_predictions(train_x: Tokens, train_y: torch.Tensor, test_x: Tokens, classes: int,
                                heads: int = 4, steps: int = 300, batch_size: int = 1024) -> tuple[float, torch.Tensor]:
    """Train accuracy of an attention-pooling probe (``heads`` learned queries over the standardised positions, their
    pooled features concatenated, then linear), and its predicted class of each test row."""
    torch.manual_seed(0)
    real = train_x.features[train_x.mask]
    mean, std = real.mean(0), real.std(0) + 1e-6
    queries = torch.nn.Linear(real.shape[1], heads)
    head = torch.nn.Linear(heads * real.shape[1], classes)
    optimizer = torch.optim.Adam([*queries.parameters(), *head.parameters()], lr=3e-3, weight_decay=1e-4)

    def logits(x: Tokens) -> torch.Tensor:
        features = (x.features - mean) / std
        weights = queries(features).masked_fill(~x.mask[..., None], float("-inf")).softmax(dim=1)  # [N, T, heads]
        return head(torch.einsum("nth,ntd->nhd", weights, features).flatten(1))

    for _ in range(steps):
        rows = torch.randint(len(train_x), (min(batch_size, len(train_x)),))
        loss = F.cross_entropy(logits(train_x[rows]), train_y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (logits(train_x).argmax(1) == train_y).float().mean().item(), logits(test_x).argmax(1)


def per_value(true: list[str], predicted: list[str]) -> dict:
    """For each true value: its number of rows, the share read right and what it was read as (most common first)."""
    rows = {}
    for value in sorted(set(true)):
        read = [p for t, p in zip(true, predicted) if t == value]
        rows[value] = {"captions": len(read), "right": sum(p == value for p in read) / len(read),
                       "read_as": dict(collections.Counter(read).most_common())}
    return rows


def probe_attributes(train: list[str], test: list[str], train_x: torch.Tensor | Tokens, test_x: torch.Tensor | Tokens,
                     predict=probe_predictions) -> dict:
    """Per attribute: the probe's train and unseen-class accuracy, and its per-value readings of the test captions.
    An attribute that no train or no test caption states is left out. ``predict`` is the probe
    (`probe_predictions` on pooled embeddings, `attention_probe_predictions` on `Tokens`)."""
    results = {}
    for attribute in ATTRIBUTES:
        (train_rows, train_values), (test_rows, test_values) = stated(train, attribute), stated(test, attribute)
        if not train_rows or not test_rows:
            continue
        vocabulary = sorted(set(train_values) | set(test_values))
        index = {value: i for i, value in enumerate(vocabulary)}
        train_accuracy, predicted = predict(
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="the synthetic captioned-flowers set (python -m t2i.datasets synth)")
    parser.add_argument("--encoder", action="append", required=True, type=named_path,
                        help="NAME=FOLDER_OR_ID (a pipeline folder works too), repeatable")
    parser.add_argument("--train_captions", type=int, default=12000, help="train-split captions the probes learn from (default: 12000)")
    parser.add_argument("--test_captions", type=int, default=4000, help="unseen-class captions they are scored on (default: 4000)")
    parser.add_argument("--generator_code", action="store_true",
                        help="for a pipeline folder, also probe the generator's text code (GanClsGenerator.text_code)")
    parser.add_argument("--pooling", choices=["mean", "attention"], default="mean",
                        help="mean: the encoder's pooled embedding, a linear probe; attention: its per-position features, "
                             "an attention-pooling probe")
    parser.add_argument("--out", default=None, help="write the results here as JSON, and the table beside it as .md")
    args = parser.parse_args(argv)
    if args.pooling == "attention" and args.generator_code:
        parser.error("--generator_code probes the generator's code of the pooled embedding: use it with --pooling mean")

    generator = torch.Generator().manual_seed(0)
    train = sample_captions(load_captioned_dataset(args.dataset, "train"), args.train_captions, generator)
    test = sample_captions(load_captioned_dataset(args.dataset, "test"), args.test_captions, generator)
    results = []
    for name, path in args.encoder:
        encoder = load_encoder(path)
        started = time.perf_counter()
        if args.pooling == "attention":
            train_embeds, test_embeds = encode_tokens(encoder, train), encode_tokens(encoder, test)
            name = f"{name}, per position"
        else:
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
                   "attributes": probe_attributes(train, test, train_x, test_x,
                                                  attention_probe_predictions if args.pooling == "attention" else probe_predictions)}
            results.append(row)
            print(f"{row_name}: " + ", ".join(f"{a} {row['attributes'][a]['test_classes']:.3f}" for a in row["attributes"]), flush=True)

    header = "| text encoder | dim | " + " | ".join(ATTRIBUTES) + " |"
    lines = [header, "|---|---|" + "---|" * len(ATTRIBUTES)]
    for row in results:
        lines.append(f"| {row['name']} | {row['dim']} | " + " | ".join(f"{row['attributes'][a]['test_classes']:.3f}" if a in row["attributes"] else "n/a" for a in ATTRIBUTES) + " |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"dataset": args.dataset, "train_captions": len(train), "test_captions": len(test),
                                              "pooling": args.pooling, "encoders": results}, indent=2))
        Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    run_main(main)
