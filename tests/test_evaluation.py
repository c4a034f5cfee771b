"""t2i.evaluation: the attribute oracle, each metric on hand-made cases, and the CLI end to end."""

import json
import math

import pytest
import torch
from conftest import make_tiny_pipeline
from datasets import Dataset
from huggingface_hub import ModelCard
from PIL import Image

from t2i.data import augment_batch, images_to_uint8, load_captioned_dataset
from t2i.evaluation import (
    ORACLE_ATTRIBUTES,
    AttributeOracle,
    attribute_targets,
    evaluate_pipeline,
    frechet_distance,
    load_or_train_oracle,
    mean_pairwise_distance,
    oracle_accuracy,
    r_precision,
    text_image_agreement,
)
from t2i.evaluation.__main__ import main
from t2i.hub import CheckpointError, ModelCardInfo
from t2i.text_pretraining.joint_embedding import JOINT_IMAGE_ENCODER_FOLDER, JointImageEncoder
from t2i.text_encoders import text_embedding_dim

ORACLE_STEPS = 150
ORACLE_IMAGES = 600


@pytest.fixture(scope="module")
def splits(tiny_synthetic_dataset):
    return load_captioned_dataset(tiny_synthetic_dataset, "train"), load_captioned_dataset(tiny_synthetic_dataset, "test")


@pytest.fixture(scope="module")
def oracle_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("oracle") / "oracle"
    # Rendered at 64 px like the tiny dataset, so the tiny oracle sees the same kind of image.
    load_or_train_oracle(folder, num_images=ORACLE_IMAGES, steps=ORACLE_STEPS, render_resolution=64, progress=False)
    return folder


@pytest.fixture(scope="module")
def oracle(oracle_folder):
    return load_or_train_oracle(oracle_folder)[0]


def _center_crops(dataset):
    return augment_batch(images_to_uint8(dataset, 76), 64, train=False)


def test_oracle_saves_safetensors_and_reloads_identically(splits, oracle_folder, oracle):
    assert sorted(p.name for p in oracle_folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert not oracle_folder.with_name("oracle.partial").exists()
    images = _center_crops(splits[0].select(range(16)))
    again = AttributeOracle.from_pretrained(oracle_folder).eval()
    assert torch.equal(oracle.predict(images)[1], again.predict(images)[1])
    assert set(oracle.config.attribute_values) == set(ORACLE_ATTRIBUTES)


def test_oracle_reads_real_images_and_not_noise(splits, oracle):
    train, test = splits
    real = _center_crops(train)
    accuracy = oracle_accuracy(oracle, real, train["attributes"])
    # 600 training images, 150 steps: far from the full-size ceiling; petal colour is learnt first, the rest is
    # still well above chance.
    chance = {name: 1 / len(values) for name, values in oracle.config.attribute_values.items()}
    assert accuracy["petal_color"] > 0.7, accuracy
    assert sum(accuracy[name] - chance[name] for name in ORACLE_ATTRIBUTES) / len(ORACLE_ATTRIBUTES) > 0.15, accuracy

    captions = [row[0] for row in train["captions"]]
    values = oracle.config.attribute_values
    real_agreement = text_image_agreement(oracle.predict(real)[0], captions, values)
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_agreement = text_image_agreement(oracle.predict(noise)[0], captions, values)
    assert real_agreement["petal_color"] > 0.7
    # Noise gets one reading whatever the caption: agreement near the frequency of one value, not near real.
    assert noise_agreement["petal_color"] < 0.25, noise_agreement
    assert noise_agreement["all"] < real_agreement["all"] / 2


def test_frechet_distance_matches_closed_form():
    rng = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=rng)
    b = torch.randn(20000, 2, generator=rng) * 3 + 2  # N(2, 9 I): |Δμ|² = 8, tr terms = 2 + 18 − 2·2·3 = 8
    assert frechet_distance(a, b) == pytest.approx(16.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_orders_real_above_noise(splits, oracle):
    train, test = splits
    real_train, real_test = oracle.predict(_center_crops(train))[1], oracle.predict(_center_crops(test))[1]
    noise = oracle.predict(torch.rand(len(test), 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1)[1]
    assert frechet_distance(real_train, real_test) < 0.5 * frechet_distance(noise, real_test)


def test_mean_pairwise_distance_by_hand():
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    three = torch.tensor([[0.0], [1.0], [3.0]])  # pairs: 1, 3, 2
    assert mean_pairwise_distance(three) == pytest.approx(2.0)
    assert mean_pairwise_distance(torch.ones(5, 4)) == 0.0


def test_text_image_agreement_by_hand():
    values = {name: list(v) for name, v in AttributeOracle().config.attribute_values.items()}
    pick = {name: {v: i for i, v in enumerate(vals)} for name, vals in values.items()}
    captions = [
        "this flower has red petals and a yellow center",  # petal right, centre wrong
        "a flower with five pointed blue petals",  # all three right
        "the flower is big and beautiful",  # states no oracle attribute: not counted
    ]
    predictions = {name: torch.zeros(3, dtype=torch.long) for name in values}
    predictions["petal_color"] = torch.tensor([pick["petal_color"]["red"], pick["petal_color"]["blue"], 0])
    predictions["center_color"] = torch.tensor([pick["center_color"]["white"], 0, 0])
    predictions["petal_count_word"] = torch.tensor([0, pick["petal_count_word"]["five"], 0])
    predictions["petal_shape"] = torch.tensor([0, pick["petal_shape"]["pointed"], 0])
    result = text_image_agreement(predictions, captions, values)
    assert result["petal_color"] == 1.0 and result["count_petal_color"] == 2
    assert result["center_color"] == 0.0 and result["count_center_color"] == 1
    assert result["petal_count_word"] == 1.0 and result["petal_shape"] == 1.0
    assert result["all"] == 0.5
    assert math.isnan(result["secondary_color"])


def test_r_precision_perfect_random_and_wrong():
    rng = torch.Generator().manual_seed(0)
    captions = torch.nn.functional.normalize(torch.randn(500, 32, generator=rng), dim=1)
    labels = torch.arange(500) % 50
    assert r_precision(captions.clone(), captions, labels, torch.Generator().manual_seed(0)) == 1.0
    random_images = torch.randn(500, 32, generator=rng)
    assert r_precision(random_images, captions, labels, torch.Generator().manual_seed(0)) < 0.05
    assert r_precision(-captions, captions, labels, torch.Generator().manual_seed(0)) == 0.0


def test_r_precision_scores_a_positions_text_encoder_on_the_mean_of_its_positions(splits, oracle):
    """A char-CNN-RNN with pooling="positions" (for --text_attention_heads) embeds a caption as its position states
    concatenated; R-precision's image encoder θ was trained against their mean, Reed's embedding, so the real images'
    R-precision, which depends on the text side and θ only, is the pooled encoder's."""
    import copy

    from t2i.models import GanClsGenerator
    from t2i.pipeline import GanClsPipeline

    pooled = make_tiny_pipeline(seed=0)
    text_encoder = copy.deepcopy(pooled.text_encoder)
    text_encoder.config.pooling = "positions"
    config = text_encoder.config
    generator = GanClsGenerator(text_embed_dim=config.output_dim, ngf=8, text_positions=config.num_positions, text_attention_heads=2)
    positional = GanClsPipeline(tokenizer=pooled.tokenizer, text_encoder=text_encoder, generator=generator)
    torch.manual_seed(0)
    theta = JointImageEncoder(embed_dim=config.embed_dim, channels=(8, 16))
    train, test = splits
    scores = [evaluate_pipeline(p, test, train, oracle, num_samples=40, joint_image_encoder=theta, diversity_seeds=2)["r_precision"]
              for p in (pooled, positional)]
    assert scores[1]["real"] == scores[0]["real"]
    assert 0.0 <= scores[1]["generated"] <= 1.0


def test_attribute_targets_reject_unknown_values():
    values = AttributeOracle().config.attribute_values
    with pytest.raises(KeyError):
        attribute_targets([{name: "chartreuse" for name in values}], values)


def test_pickled_oracle_is_refused(tmp_path):
    folder = tmp_path / "oracle"
    AttributeOracle().save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        load_or_train_oracle(folder)


def test_evaluation_needs_the_attributes_column(tiny_pipeline, oracle):
    no_attributes = Dataset.from_dict({"captions": [["a red flower"]], "label": [0]})
    with pytest.raises(ValueError, match="attributes"):
        evaluate_pipeline(tiny_pipeline, no_attributes, no_attributes, oracle, num_samples=2)


def test_cli_end_to_end(tiny_synthetic_dataset, oracle_folder, tmp_path, capsys):
    model = tmp_path / "model"
    make_tiny_pipeline(seed=0).save_pretrained(model)
    out = tmp_path / "eval" / "results.json"
    results = main([
        "--model", str(model), "--dataset", str(tiny_synthetic_dataset), "--num-samples", "40",
        "--oracle_dir", str(oracle_folder), "--oracle_steps", str(ORACLE_STEPS), "--out", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["num_samples"] == 40 and saved["model"] == str(model)
    assert saved == json.loads(json.dumps(results))
    table = out.with_suffix(".md").read_text()
    assert "| generated images vs their captions |" in table and "Fréchet distance" in table
    assert table in capsys.readouterr().out
    # An untrained generator: its images are not what the captions say, and far from real images.
    assert saved["agreement_generated"]["all"] < saved["agreement_real"]["all"]
    assert saved["frechet_distance"]["ratio"] > 1.5
    assert saved["r_precision"] is None  # no joint image encoder next to this pipeline
    # Same seed, same numbers; with a joint image encoder next to the pipeline, R-precision too; and the model card
    # of a train_accelerate.py folder (its training_summary.json) gets the numbers, with a sample grid.
    JointImageEncoder(embed_dim=text_embedding_dim(make_tiny_pipeline().text_encoder), channels=(8, 16)).save_pretrained(model / JOINT_IMAGE_ENCODER_FOLDER)
    info = ModelCardInfo(model_id="tiny", dataset_name="synthetic", synthetic_data=True, metrics={"text_encoder_zero_shot_top1": 0.5})
    (model / "training_summary.json").write_text(json.dumps({"final_losses": {}, **info.__dict__}))
    grid = tmp_path / "grid.png"
    again = main([
        "--model", str(model), "--dataset", str(tiny_synthetic_dataset), "--num-samples", "40", "--oracle_dir", str(oracle_folder),
        "--update_model_card", "--sample_grid", str(grid),
    ])
    assert again["agreement_generated"] == saved["agreement_generated"]
    assert again["frechet_distance"] == saved["frechet_distance"]
    assert 0.0 <= again["r_precision"]["generated"] <= 1.0 and again["r_precision"]["chance"] == 0.01
    card = ModelCard.load(model / "README.md")
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["text_encoder_zero_shot_top1"] == 0.5
    assert metrics["text_image_agreement_petal_color"] == pytest.approx(again["agreement_generated"]["petal_color"])
    assert metrics["r_precision"] == pytest.approx(again["r_precision"]["generated"])
    assert "| generated images vs their captions |" in card.text and "python -m t2i.evaluation" in card.text
    prompts = again["sample_grid"]["prompts"]
    assert Image.open(grid).size == (8 * 64, len(prompts) * 64) and 1 <= len(prompts) <= 8


def test_add_to_model_card_keeps_earlier_metrics_and_refuses_a_plain_folder(tmp_path):
    from t2i.evaluation.report import add_to_model_card

    info = ModelCardInfo(model_id="tiny", dataset_name="synthetic", synthetic_data=True, metrics={"r_precision": 0.2})
    (tmp_path / "training_summary.json").write_text(json.dumps({"final_losses": {}, **info.__dict__}))
    add_to_model_card(tmp_path, {"free_text_pass_rate": 0.5})
    card = ModelCard.load(tmp_path / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"r_precision": 0.2, "free_text_pass_rate": 0.5}
    assert "| free_text_pass_rate | 0.5 |" in card.text
    assert json.loads((tmp_path / "training_summary.json").read_text())["metrics"] == {"r_precision": 0.2, "free_text_pass_rate": 0.5}
    with pytest.raises(FileNotFoundError, match="needs a train_accelerate.py output folder"):
        add_to_model_card(tmp_path / "nowhere", {"x": 1.0})


# ----------------------------------------------------------------------------------------------------------------
# The shipped oracle (newcomer issue, item 2)


def test_the_shipped_oracle_reads_fresh_renders():
    from t2i.evaluation import load_oracle, oracle_training_set

    oracle, folder = load_oracle()
    assert folder.name == "attribute_oracle"
    images, attributes = oracle_training_set(200, seed=424242, num_proc=1)  # renders it never saw
    accuracy = oracle_accuracy(oracle, augment_batch(images, 64, train=False), attributes)
    # Oracle v2 measured 0.990 / 0.959 / 0.953 on real test images; 200 renders leave a few points of noise.
    assert accuracy["petal_color"] > 0.95 and accuracy["petal_shape"] > 0.85 and accuracy["center_color"] > 0.85


def test_a_changed_shipped_oracle_is_refused(tmp_path, monkeypatch):
    import shutil

    import t2i.evaluation.oracle as evaluation

    copy = tmp_path / "attribute_oracle"
    shutil.copytree(evaluation.shipped_oracle_folder(), copy)
    weights = copy / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight: still a valid safetensors file
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(evaluation, "shipped_oracle_folder", lambda: copy)
    with pytest.raises(CheckpointError, match="SHA-256"):
        evaluation.load_oracle()
    with pytest.raises(FileNotFoundError, match="--train_oracle"):
        evaluation.load_oracle(tmp_path / "empty")


def test_train_oracle_shows_progress(tiny_synthetic_dataset, tmp_path, capsys):
    model = tmp_path / "model"
    make_tiny_pipeline(seed=0).save_pretrained(model)
    main(["--model", str(model), "--dataset", str(tiny_synthetic_dataset), "--num-samples", "10", "--train_oracle",
          "--oracle_dir", str(tmp_path / "oracle"), "--oracle_images", "40", "--oracle_steps", "3"])
    err = capsys.readouterr()
    assert "Rendering 40 flowers" in err.out and "attribute oracle: 100%" in err.err  # tqdm: count, rate and ETA
    assert (tmp_path / "oracle" / "config.json").is_file()


def test_readme_evaluate_section_on_a_fresh_synthetic_set(tmp_path):
    """The README's Evaluate commands, as a newcomer runs them (a small set; the shipped oracle, no training)."""
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT

    data = tmp_path / "data" / "synthetic-flowers"
    missing = subprocess.run([sys.executable, "-m", "t2i.evaluation", "--model", "pretrained", "--dataset", str(data)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "python -m t2i.datasets synth --out" in missing.stderr and "Traceback" not in missing.stderr
    subprocess.run([sys.executable, "-m", "t2i.datasets", "synth", "--out", str(data), "--num-images", "300", "--num-proc", "1"],
                   cwd=REPO_ROOT, check=True, timeout=600, capture_output=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "t2i.evaluation", "--model", "pretrained", "--dataset", str(data),
                             "--split", "test", "--num-samples", "200", "--out", str(tmp_path / "results.json")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| generated images vs their captions |" in result.stdout
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["oracle_dir"].endswith("attribute_oracle") and time.monotonic() - started < 300


def test_flower_pixel_share_counts_petals_not_backgrounds_or_grey():
    from t2i.evaluation.robustness import flower_pixel_share

    def flat(red, green, blue):
        return torch.tensor([red, green, blue]).view(1, 3, 1, 1).expand(1, 3, 8, 8)

    frames = torch.cat([
        flat(0.9, 0.2, 0.5),    # a pink petal
        flat(0.95, 0.95, 0.93),  # a white petal
        flat(0.45, 0.3, 0.15),  # a brown disc
        flat(0.3, 0.6, 0.25),   # foliage
        flat(0.2, 0.1, 0.25),   # a dark background
        flat(0.5, 0.5, 0.5),    # the flat grey frame of a washed-out generator
        flat(0.62, 0.6, 0.57),  # a warmer grey, still neutral
    ])
    assert flower_pixel_share(frames).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    half = frames[5:6].clone()
    half[..., :4] = flat(0.9, 0.2, 0.5)[..., :4]  # a pink half on grey
    assert flower_pixel_share(half).item() == 0.5


def test_real_renders_have_a_flower_share_like_the_protocols_reference():
    from t2i.evaluation.robustness import real_image_statistics

    reference = real_image_statistics(64, num_images=32)
    # Measured on 256 renders: 0.279 (0.289 before grey was excluded); a frame is mostly background.
    assert 0.18 < reference["flower_share_mean"] < 0.4, reference
    assert 0 < reference["flower_share_p05"] < reference["flower_share_mean"]


def test_robustness_command_writes_both_checks_for_a_saved_model(tmp_path, capsys):
    """`python -m t2i.evaluation.robustness`, as pilots_report.py and benchmarks/truncation.py score it
    (`robustness_report`): every free-text prompt and every strip is judged and saved, and the printed totals are
    the saved ones."""
    from t2i.evaluation.robustness import INTERPOLATION_PAIRS, free_text_prompts, main as robustness_main

    make_tiny_pipeline(seed=3).save_pretrained(tmp_path / "model")
    report = robustness_main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "robustness.json")])
    saved = json.loads((tmp_path / "robustness.json").read_text())
    free, strips = saved["free_text"], saved["interpolation"]
    assert [row["prompt"] for row in free["prompts"]] == free_text_prompts()
    assert strips["total"] == len(strips["strips"]) == 4 * len(INTERPOLATION_PAIRS)
    assert all(len(row["feature_distance"]) == strips["num_steps"] for row in strips["strips"])  # the oracle judged 64 px frames
    assert free["passed"] == sum(row["passes"] for row in free["prompts"]) and saved == json.loads(json.dumps(report))
    assert f"free text: {free['passed']} / {free['total']} prompts pass; interpolation: {strips['passed']} / {strips['total']}" in capsys.readouterr().out


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_robustness_command_refuses_a_model_folder_in_one_line(tmp_path, folder):
    """A missing folder or one with no model_index.json: `error: ...` and exit status 1, as `python -m t2i.evaluation`."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "t2i.evaluation.robustness", "--model", str(tmp_path / folder)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    expected = "no such model folder" if folder == "missing" else "has no model_index.json"
    assert result.returncode == 1 and result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
