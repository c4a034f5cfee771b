"""Benchmark scripts whose output docs/results.md quotes: they run end to end on a tiny set and report what they claim."""

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unconditional_baseline_trains_scores_and_draws_grids(tiny_synthetic_dataset, tmp_path):
    baseline = load_script("unconditional_baseline")
    out = tmp_path / "dcgan"
    summary = baseline.main(["--dataset", str(tiny_synthetic_dataset), "--output_dir", str(out), "--max_train_steps", "4",
                             "--train_batch_size", "8", "--ngf", "8", "--ndf", "8", "--grid_steps", "2", "--num_samples", "16"])
    assert summary["steps"] == 4 and [entry["step"] for entry in summary["log"]] == [2, 4]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    grids = sorted(path.name for path in out.glob("samples_*.png"))
    assert grids == ["samples_000002.png", "samples_000004.png"]
    grid = np.asarray(Image.open(out / grids[-1]))
    assert grid.shape == (512, 512, 3) and grid.std() > 0  # 8 × 8 images of 64 px, not a blank canvas
    # The Fréchet ratio is the evaluation's: a distance over the real train-vs-test distance, both positive.
    assert summary["oracle_frechet_distance"] > 0 and summary["real_train_vs_real_test"] > 0
    assert np.isclose(summary["oracle_frechet_distance_over_real"], summary["oracle_frechet_distance"] / summary["real_train_vs_real_test"])
    assert 0 <= summary["flower_pixel_share"] <= 1 and summary["roughness"] > 0


def test_unconditional_baseline_refuses_bad_input_before_any_work(tiny_synthetic_dataset, tmp_path, capsys):
    import pytest

    baseline = load_script("unconditional_baseline")
    out = tmp_path / "never"
    for flags, message in ((["--grid_steps", "0"], "--grid_steps must be ≥ 1"), (["--max_train_steps", "0"], "--max_train_steps must be ≥ 1"),
                           (["--num_samples", "1"], "--num_samples must be ≥ 2")):
        with pytest.raises(SystemExit):
            baseline.main(["--dataset", str(tiny_synthetic_dataset), "--output_dir", str(out), *flags])
        assert message in capsys.readouterr().err
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    for parquet in tiny_synthetic_dataset.rglob("train*.parquet"):
        (train_only / parquet.name).write_bytes(parquet.read_bytes())
    for dataset in (tmp_path / "missing", train_only):  # no folder, no test split: refused before training
        with pytest.raises((FileNotFoundError, ValueError, KeyError)) as error:
            baseline.main(["--dataset", str(dataset), "--output_dir", str(out), "--max_train_steps", "1"])
        assert "test" in str(error.value) or "missing" in str(error.value)
    assert not out.exists()


def test_text_probe_reads_values_per_value_and_from_the_generators_code(tiny_synthetic_dataset, tmp_path):
    import torch

    probe = load_script("text_encoder_probe")
    # Hand-made embeddings: one feature per petal colour, so the probe reads every unseen caption right, except
    # the one whose feature says "red" where its caption says "white".
    train = ["a flower with red petals", "a flower with white petals"] * 8
    test = ["red petals", "white petals", "the petals are white"]
    features = {"red": torch.tensor([1.0, 0.0]), "white": torch.tensor([0.0, 1.0])}
    train_x = torch.stack([features["red" if "red" in c else "white"] for c in train])
    test_x = torch.stack([features["red"], features["white"], features["red"]])
    petal = probe.probe_attributes(train, test, train_x, test_x)["petal_color"]
    assert petal["train"] == 1.0 and petal["test_classes"] == 2 / 3 and petal["test_captions"] == 3
    assert petal["per_value"] == {"red": {"captions": 1, "right": 1.0, "read_as": {"red": 1}},
                                  "white": {"captions": 2, "right": 0.5, "read_as": {"white": 1, "red": 1}}}

    from conftest import make_tiny_pipeline

    folder = tmp_path / "pipeline"
    make_tiny_pipeline().save_pretrained(folder)
    out = tmp_path / "probe.json"
    rows = probe.main(["--dataset", str(tiny_synthetic_dataset), "--encoder", f"tiny={folder}", "--generator_code",
                       "--train_captions", "200", "--test_captions", "100", "--out", str(out)])
    assert [row["name"] for row in rows] == ["tiny", "tiny: generator text code"]
    assert rows[1]["dim"] == make_tiny_pipeline().generator.config.text_proj_dim != rows[0]["dim"]
    saved = json.loads(out.read_text())["encoders"]
    for row in saved:
        for result in row["attributes"].values():
            assert sum(v["captions"] for v in result["per_value"].values()) == result["test_captions"]
            assert 0 <= result["test_classes"] <= 1


def test_the_attention_probe_reads_which_part_a_colour_belongs_to_where_the_mean_cannot(tiny_synthetic_dataset, tmp_path):
    import torch

    probe = load_script("text_encoder_probe")
    # Two positions, each a one-hot colour: the petals' at one, the edges' at the other. "red petals with white edges"
    # and "white petals with red edges" have the same mean, so a probe of the pooled feature cannot tell their petal
    # colour apart; one that attends over the positions can. Which position holds the petals varies with the caption.
    colour = {"red": torch.tensor([1.0, 0.0, 0.0]), "white": torch.tensor([0.0, 1.0, 0.0])}
    marker = torch.tensor([0.0, 0.0, 1.0])  # marks the petals' position

    def tokens(petals, edges, petals_first):
        first, second = (colour[petals] + marker, colour[edges]) if petals_first else (colour[edges], colour[petals] + marker)
        return torch.stack([first, second])

    pairs = [("red", "white"), ("white", "red")]
    train = [f"this flower has {p} petals with {e} edges" for p, e in pairs] * 16
    train_order = [i % 4 < 2 for i in range(len(train))]
    test = [f"the petals are {p} with {e} edges" for p, e in pairs] * 4
    test_order = [i % 3 == 0 for i in range(len(test))]
    train_tokens = torch.stack([tokens(*pairs[i % 2], first) for i, first in enumerate(train_order)])
    test_tokens = torch.stack([tokens(*pairs[i % 2], first) for i, first in enumerate(test_order)])
    pooled = probe.probe_attributes(train, test, train_tokens.mean(1), test_tokens.mean(1))["petal_color"]
    attended = probe.probe_attributes(train, test, probe.Tokens(train_tokens, torch.ones(train_tokens.shape[:2], dtype=torch.bool)),
                                      probe.Tokens(test_tokens, torch.ones(test_tokens.shape[:2], dtype=torch.bool)),
                                      probe.attention_probe_predictions)["petal_color"]
    assert pooled["test_classes"] == 0.5 and attended["test_classes"] == 1.0 and attended["train"] == 1.0

    # End to end on a real (tiny) char-CNN-RNN: its per-position features, padded masks for the transformer case.
    from conftest import make_tiny_pipeline

    folder = tmp_path / "pipeline"
    make_tiny_pipeline().save_pretrained(folder)
    out = tmp_path / "tokens.json"
    rows = probe.main(["--dataset", str(tiny_synthetic_dataset), "--encoder", f"tiny={folder}", "--pooling", "attention",
                       "--train_captions", "200", "--test_captions", "100", "--out", str(out)])
    assert [row["name"] for row in rows] == ["tiny, per position"] and json.loads(out.read_text())["pooling"] == "attention"
    assert all(0 <= result["test_classes"] <= 1 for result in rows[0]["attributes"].values())


def test_every_pilot_row_parses_to_a_valid_training_command(tiny_synthetic_dataset, tmp_path):
    """benchmarks/pilots_v3.sh's rows are what docs/results.md's pilot tables ran: each must still be a command
    train_accelerate.py accepts, with the script's common flags before it (its last flag wins, as in the script)."""
    import re
    import shlex

    import train_accelerate

    script = (BENCHMARKS / "pilots_v3.sh").read_text()
    common = re.search(r"^COMMON=\((.*?)\)$", script, re.S | re.M).group(1)
    common = (common.replace('"$DATASET"', str(tiny_synthetic_dataset)).replace('"$TEXT_ENCODER"', "pretrained")
              .replace('"${LIMIT[@]}"', "--max_train_steps 10").replace('"${MIXED_PRECISION:-bf16}"', "no")
              .replace('"$REPORT"', "none").replace('"$OUT/embedding_cache"', str(tmp_path / "cache")))
    rows = re.findall(r'^  "([a-z0-9_]+)\|[^|]*\|([^"]*)"$', script, re.M)
    assert len(rows) >= 25 and len({name for name, _ in rows}) == len(rows)
    for name, flags in rows:
        args = train_accelerate.parse_args([*shlex.split(common), *shlex.split(flags), "--output_dir", str(tmp_path / name)])
        assert args.output_dir == str(tmp_path / name), name
    parsed = {name: flags for name, flags in rows}
    assert "--deep_fusion" in parsed["xmc_cfx_df"] and "--counterfactual_fakes 1.0" in parsed["xmc_cff1"]


def test_attribute_confusion_finds_the_values_a_seen_combination_offers():
    confusion = load_script("attribute_confusion")
    rows = [  # three training classes
        {"petal_color": "yellow", "center_color": "white", "petal_count_word": "five", "secondary_color": None, "petal_shape": "round"},
        {"petal_color": "red", "center_color": "white", "petal_count_word": "six", "secondary_color": "white", "petal_shape": "oval"},
        {"petal_color": "pink", "center_color": "black", "petal_count_word": "five", "secondary_color": None, "petal_shape": "round",
         "pattern": "spots"},
    ]
    seen = confusion.seen_combinations(rows)
    assert len(seen) == 3 and frozenset({("petal_color", "pink"), ("center_color", "black"), ("petal_count_word", "five"),
                                         ("petal_shape", "round")}) in seen  # only ATTRIBUTES, no None values
    # "pink petals and a white centre": yellow and red petals come with a white centre in training, pink does not.
    assert confusion.seen_values({"petal_color": {"pink"}, "center_color": {"white"}}, "petal_color", seen) == {"yellow", "red"}
    assert confusion.seen_values({"petal_color": {"pink"}, "center_color": {"white"}, "petal_count_word": {"five"}},
                                 "petal_color", seen) == {"yellow"}
    # Nothing else stated: every seen value; a self-contradicting statement (two values) constrains nothing.
    assert confusion.seen_values({"petal_color": {"pink"}}, "petal_color", seen) == {"yellow", "red", "pink"}
    assert confusion.seen_values({"center_color": {"white", "black"}}, "petal_color", seen) == {"yellow", "red", "pink"}
    assert confusion.seen_values({"center_color": {"green"}}, "petal_color", seen) == set()
    palette = {"red": (0.8, 0.1, 0.1), "orange": (0.95, 0.5, 0.1), "yellow": (0.98, 0.85, 0.15), "blue": (0.2, 0.3, 0.85)}
    assert set(confusion.nearest_colors(palette, "yellow")) == {"orange", "red"}
    assert confusion.nearest_colors(palette, "blue", k=1) == ["red"]


def test_attribute_confusion_reports_each_test_class_and_adds_up(tiny_synthetic_dataset, tmp_path, monkeypatch, capsys):
    from conftest import make_tiny_pipeline

    make_tiny_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "confusion.json"
    argv = ["--model", str(tmp_path / "model"), "--dataset", str(tiny_synthetic_dataset), "--num-samples", "60", "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["attribute_confusion.py", *argv])
    load_script("attribute_confusion").main()
    report = json.loads(out.read_text())
    assert "| class | petal_color / center_color / secondary_color / pattern / petal_shape / petal_count |" in capsys.readouterr().out
    # Every caption that states a value is counted once per value and once per class, and the two tables agree.
    for attribute in ("petal_color", "center_color", "petal_shape"):
        per_value = {v: r for v, r in report[attribute].items() if isinstance(r, dict)}
        per_class = [c for c in report["by_class"].values() if attribute in c["captions"]]
        assert sum(r["captions"] for r in per_value.values()) == sum(c["captions"][attribute] for c in per_class) > 0
        right = sum(r["right"] * r["captions"] for r in per_value.values())
        assert abs(right - sum(c["right"][attribute] * c["captions"][attribute] for c in per_class)) < 1e-6
    split = [report[f"petal_color_{kind}_classes"] for kind in ("patterned", "plain")]
    assert sum(part["captions"] for part in split) == sum(r["captions"] for r in report["petal_color"].values() if isinstance(r, dict))
    assert all(c["attributes"]["petal_color"] for c in report["by_class"].values())  # each class with its true values


def test_counterfactual_tells_counts_text_only_tells_and_plausible_edits_have_none(tiny_synthetic_dataset, tmp_path):
    results = load_script("counterfactual_tells").main(["--dataset", str(tiny_synthetic_dataset), "--out", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text())["results"] == results
    by = {(r["exchange"], r["plausible"]): r for r in results if r["near_colors"] == 0}
    assert set(by) == {(0.0, False), (0.0, True), (1.0, False), (1.0, True)}
    near = next(r for r in results if r["near_colors"] == 3)
    assert near["plausible"] and near["unseen_pair"] == 0.0 and near["near_swap"] > by[0.0, True]["near_swap"]
    for r in results:
        assert r["edited"] >= 0.8 * r["captions"] and r["still_false"] == 1.0
    assert by[0.0, False]["unseen_pair"] > 0.1 and by[1.0, False]["unseen_pair"] > by[0.0, False]["unseen_pair"]
    assert by[0.0, True]["unseen_pair"] == by[1.0, True]["unseen_pair"] == 0.0
    assert by[0.0, True]["unseen_value"] < by[0.0, False]["unseen_value"]


def test_fusion_masks_reports_where_each_mask_lies_and_draws_them(tmp_path):
    import pytest
    import torch

    from t2i import GanClsGenerator, GanClsPipeline

    fusion_masks = load_script("fusion_masks")
    # Hand-made: mask 0 is a centre disc (radius < 0.3), mask 1 the rest; only the disc is drawn in a flower colour.
    from t2i.models import polar_coordinates

    radius = polar_coordinates(64, 0)[0]  # pixel centres, 1 at the middle of an edge
    disc = (radius < 0.3).float()
    masks = torch.stack([disc, 1 - disc])[None]  # [1, 2, 64, 64]
    images = torch.zeros(1, 3, 64, 64)
    images[0, 0] = disc  # red disc on black: flower pixels exactly where mask 0 is
    [layer] = fusion_masks.mask_statistics(images, [masks])
    assert layer["resolution"] == 64 and layer["max_weight_mean"] == pytest.approx(1.0)
    centre, rest = layer["masks"]
    assert centre["share"] == pytest.approx(float(disc.mean())) and centre["share"] + rest["share"] == pytest.approx(1.0)
    assert centre["distance_from_centre"] == pytest.approx(float((radius * disc).sum() / disc.sum()))
    assert centre["distance_from_centre"] < 0.3 < rest["distance_from_centre"]
    assert centre["flower_share"] == pytest.approx(1.0) and rest["flower_share"] == pytest.approx(0.0)

    # End to end on a tiny generator with masks and a palette: the masks of every fused layer and the palette's
    # regions are captured as the model weighs by them. With each predictor's bias favouring one mask by a wide
    # margin, that mask is the one captured, everywhere.
    torch.manual_seed(0)
    reference = GanClsPipeline.from_pretrained(Path(__file__).parents[1] / "pretrained")
    config = {k: v for k, v in dict(reference.generator.config).items() if not k.startswith("_")}
    generator = GanClsGenerator(**{**config, "ngf": 8, "deep_fusion": True, "fusion_masks": 3, "output_palette": 4}).eval()
    with torch.no_grad():
        for index, predictor in enumerate([*generator.fusion_mask_predictors, generator.palette_masks]):
            predictor.weight.zero_()
            predictor.bias.zero_()
            predictor.bias[index % 3] = 30.0
    pipeline = GanClsPipeline(tokenizer=reference.tokenizer, text_encoder=reference.text_encoder, generator=generator)
    images, captured = fusion_masks.masks_and_images(pipeline, ["a red flower", "a white flower"], [0, 1])
    assert images.shape == (4, 3, 64, 64)
    assert [tuple(m.shape) for m in captured] == [(4, 3, 4, 4), (4, 3, 8, 8), (4, 3, 16, 16), (4, 3, 32, 32), (4, 4, 64, 64)]
    for index, masks in enumerate(captured):
        assert torch.allclose(masks[:, index % 3], torch.ones(1), atol=1e-6), index
    layers = fusion_masks.mask_statistics(images, captured)
    assert [layer["max_weight_mean"] for layer in layers] == pytest.approx([1.0] * 5)
    grid = fusion_masks.mask_grid(images, captured)
    assert grid.size == (64 * 6, 64 * 4)
    with pytest.raises(ValueError, match="this generator has no fusion masks and no output palette"):
        from conftest import make_tiny_pipeline

        fusion_masks.masks_and_images(make_tiny_pipeline(), ["a red flower"], [0])  # Reed's plain generator


def test_text_code_space_interpolates_where_asked_and_extrapolates_the_code(tiny_synthetic_dataset, tmp_path, monkeypatch, capsys):
    import sys

    import torch

    from t2i import GanClsPipeline
    from t2i.models import GanClsGenerator

    from conftest import make_tiny_pipeline

    text_code_space = load_script("text_code_space")
    pooled = make_tiny_pipeline(seed=0)
    config = pooled.text_encoder.config
    torch.manual_seed(0)
    attention = GanClsGenerator(text_embed_dim=config.num_positions * config.embed_dim, ngf=8, normalize_text=True,
                                text_positions=config.num_positions, text_attention_heads=2)
    torch.nn.init.normal_(attention.text_attention.scores.weight)  # attention that is not yet the mean of the positions
    torch.nn.init.normal_(attention.text_projection[0].weight)  # codes of order 1, as the tiny pipeline's
    attention.eval()
    torch.manual_seed(0)
    unit = GanClsGenerator(text_embed_dim=config.embed_dim, ngf=8, normalize_text=True)  # v10's kind: mean-pooled, unit text
    torch.nn.init.normal_(unit.text_projection[0].weight)
    unit.eval()
    for name, generator in (("mean", pooled.generator), ("unit", unit), ("attention", attention)):
        GanClsPipeline(tokenizer=pooled.tokenizer, text_encoder=pooled.text_encoder, generator=generator).save_pretrained(tmp_path / name)

    def codes_and_frames(pipeline, space):
        """The text codes G is given along the strip [5, text_proj_dim], and the frames."""
        pipeline.space, given = space, []
        generate = pipeline.generator.generate_from_code
        pipeline.generator.generate_from_code = lambda noise, code: given.append(code) or generate(noise, code)
        try:
            images = pipeline.interpolate("red petals", "a white flower with many thin petals", num_steps=5,
                                          generator=torch.Generator().manual_seed(0), output_type="pt").images
        finally:
            del pipeline.generator.generate_from_code
        return torch.cat(given), images

    steps = torch.linspace(0, 1, 5)[:, None]
    for name in ("mean", "unit", "attention"):
        pipeline = text_code_space.TextSpacePipeline.from_pretrained(tmp_path / name)
        pipeline.setup(["red petals", "yellow petals and a black disc", "a white flower"])
        plain = GanClsPipeline.from_pretrained(tmp_path / name)
        expected = plain.interpolate("red petals", "a white flower with many thin petals", num_steps=5,
                                     generator=torch.Generator().manual_seed(0), output_type="pt").images
        embedding_codes, images = codes_and_frames(pipeline, "embedding")
        torch.testing.assert_close(images, expected)
        code_codes, images = codes_and_frames(pipeline, "code")  # the ends' codes, mixed
        torch.testing.assert_close(code_codes, torch.lerp(embedding_codes[0], embedding_codes[-1], steps))
        torch.testing.assert_close(images[[0, -1]], expected[[0, -1]], atol=1e-5, rtol=1e-5)
        pooled_codes, images = codes_and_frames(pipeline, "pooled")
        torch.testing.assert_close(pooled_codes[[0, -1]], embedding_codes[[0, -1]])
        G = plain.generator
        with torch.inference_mode():  # the ends after G's normalisation and pooling, mixed, then G's projection
            ends = pipeline.encode_prompt(["red petals", "a white flower with many thin petals"])
            ends = torch.nn.functional.normalize(ends, dim=1) if G.config.normalize_text else ends
            ends = G.text_attention(ends) if G.text_attention is not None else ends
            torch.testing.assert_close(pooled_codes, G.text_projection(torch.lerp(*ends.split(1), steps)))
        if name == "mean":  # no attention, no normalisation: the pooled vector is the embedding itself
            torch.testing.assert_close(pooled_codes, embedding_codes)
        else:  # unit vectors' mixture is shorter mid-strip; a mixture of position states is not one of what the heads read
            assert not torch.allclose(pooled_codes[1:-1], embedding_codes[1:-1], rtol=1e-5, atol=0)
        # c' = c̄ + s·(c − c̄): s = 1 is the plain model; s = 2 doubles every code's distance from c̄.
        with torch.inference_mode():
            embeds = pipeline.encode_prompt(["red petals", "a white flower"])
            code = plain.generator.text_code(embeds)[0]
            pipeline.scale = 1.0
            torch.testing.assert_close(pipeline.generator.text_code(embeds)[0], code)
            pipeline.scale = 2.0
            torch.testing.assert_close(pipeline.generator.text_code(embeds)[0] - pipeline.mean_code, 2 * (code - pipeline.mean_code))

    out = tmp_path / "space.json"
    monkeypatch.setattr(sys, "argv", ["text_code_space.py", "--model", str(tmp_path / "attention"), "--dataset", str(tiny_synthetic_dataset),
                                      "--scale", "1.0", "1.4", "--num-samples", "16", "--out", str(out)])
    text_code_space.main()
    report = json.loads(out.read_text())
    assert [row["space"] for row in report["interpolation"]] == ["embedding", "pooled", "code"]
    assert all(row["total"] == 20 and len(row["failing"]) == 20 - row["passed"] for row in report["interpolation"])
    assert [row["scale"] for row in report["extrapolation"]] == [1.0, 1.4]  # 1.0 would be added if left out
    assert report["extrapolation"][0]["oracle_frechet_distance"] != report["extrapolation"][1]["oracle_frechet_distance"]  # other images
    assert "| code |" in capsys.readouterr().out


@pytest.mark.parametrize("script, flags", [("attribute_confusion", ["--dataset"]), ("text_code_space", ["--dataset"]),
                                           ("truncation", ["--dataset"]), ("fusion_masks", []), ("generate_speed", []),
                                           ("app_load", [])])
def test_a_benchmark_names_a_missing_model_in_one_line(script, flags, tiny_synthetic_dataset, tmp_path, monkeypatch):
    missing = tmp_path / "no-such-model"
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--model", str(missing), *(f for flag in flags for f in (flag, str(tiny_synthetic_dataset)))])
    with pytest.raises(SystemExit) as stopped:  # as `python benchmarks/SCRIPT.py` runs it
        runpy.run_path(str(BENCHMARKS / f"{script}.py"), run_name="__main__")
    assert str(stopped.value.code).startswith("error: ") and str(missing) in str(stopped.value.code)


def test_named_options_take_name_equals_path():
    import argparse

    from t2i.cli import named_path

    assert named_path("v10=pretrained") == ("v10", "pretrained")
    assert named_path("a=b=c") == ("a", "b=c")  # the first '=' splits
    for bad in ("pretrained", "=pretrained", "v10=", " = "):
        with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=PATH"):
            named_path(bad)
