"""train_accelerate.py end to end: real subprocesses, real accelerate launches, real SIGKILLs."""

import json
import os
import pickle
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import train_accelerate
from t2i.hub import CheckpointError
from t2i.training import list_checkpoints
from t2i import GanClsPipeline
from t2i.text_pretraining.joint_embedding import JOINT_IMAGE_ENCODER_FOLDER, load_joint_image_encoder
from t2i.text_encoders import CharCnnRnnConfig, build_char_cnn_rnn

from conftest import TINY_TEXT_ENCODER_CONFIG
from test_hub import _Tripwire

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "train_accelerate.py")
STEPS = 12


@pytest.fixture(scope="module")
def tiny_text_encoder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text_encoder")
    torch.manual_seed(0)
    build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def train_args(tiny_synthetic_dataset, tiny_text_encoder, tmp_path_factory) -> list[str]:
    cache = tmp_path_factory.mktemp("embedding_cache")
    # t2i-v8's plain Reed generator: the grow tests add deep fusion, masks and the palette (the t2i-v10 default) to it.
    return [
        "--recipe", "t2i-v8",
        "--dataset_name", str(tiny_synthetic_dataset), "--text_encoder_path", str(tiny_text_encoder), "--cache_dir", str(cache),
        "--ngf", "8", "--ndf", "8", "--train_batch_size", "16", "--max_train_steps", str(STEPS), "--checkpointing_steps", "3",
        "--use_ema", "--report_to", "none", "--validation_epochs", "1", "--seed", "3",
    ]


def run(args, output_dir, check=True, **popen_kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args, "--output_dir", str(output_dir)], capture_output=True, text=True, check=check, timeout=300, **popen_kwargs)


def final_state(output_dir: Path) -> dict[str, torch.Tensor]:
    """The saved pipeline's generator (EMA) and the last checkpoint's generator and discriminator."""
    last = list_checkpoints(output_dir)[-1]
    state = {f"ema.{k}": v for k, v in load_file(output_dir / "generator" / "diffusion_pytorch_model.safetensors").items()}
    state.update({f"g.{k}": v for k, v in load_file(last / "model.safetensors").items()})
    state.update({f"d.{k}": v for k, v in load_file(last / "model_1.safetensors").items()})
    return state


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted_run(train_args, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run(train_args, output_dir)
    assert "generator weights identical on all 1 rank(s): True" in result.stdout
    return output_dir


@pytest.mark.slow  # two tiny runs and an export (30 s); TextAttentionPooling itself is checked in test_models.py
def test_text_attention_reads_the_encoders_position_states_end_to_end(train_args, tiny_text_encoder, tmp_path):
    """--text_attention_heads with a char-CNN-RNN (saved with mean pooling, or with pooling="positions"): G and D
    attend over its position states, the run resumes, exports (with the encoder as saved) and loads as a pipeline;
    a text encoder without position states is refused before any work."""
    from t2i.text_encoders import TextEncoder, with_position_states
    from t2i.training import export_checkpoint

    positional = TextEncoder.from_pretrained(str(tiny_text_encoder))
    with_position_states(positional.model)
    positional.save_pretrained(tmp_path / "positions")
    args = [*train_args, "--text_attention_heads", "2", "--max_train_steps", "3", "--checkpointing_steps", "3"]  # the mean encoder
    run(args, tmp_path / "run")
    pipeline = GanClsPipeline.from_pretrained(tmp_path / "run")
    config = positional.model.config
    assert pipeline.generator.config.text_embed_dim == config.num_positions * config.embed_dim
    assert pipeline.generator.config.text_positions == config.num_positions and pipeline.generator.config.text_attention_heads == 2
    scores = pipeline.generator.text_attention.scores.weight
    assert scores.shape == (2, config.embed_dim) and scores.abs().sum() > 0  # trained away from its zero start
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "training_state.json").read_text())
    assert state["model_config"]["text_positions"] == config.num_positions
    assert pipeline.text_encoder.config.pooling == "positions" and state["text_encoder_fingerprint"] == positional.fingerprint()
    # Resumed with the encoder saved with pooling="positions": the same encoder, so the same run.
    resume = [*train_args, "--text_encoder_path", str(tmp_path / "positions"), "--text_attention_heads", "2"]
    run([*resume, "--max_train_steps", "4", "--checkpointing_steps", "4", "--resume_from_checkpoint", "latest"], tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint-4").is_dir()  # resumed from checkpoint-3 with the recorded text_positions
    for name, encoder in (("exported", None), ("from_mean", tiny_text_encoder), ("from_positions", tmp_path / "positions")):
        exported, difference = export_checkpoint(tmp_path / "run" / "checkpoint-4", tmp_path / name, text_encoder_path=encoder)
        assert difference == 0.0
        images = GanClsPipeline.from_pretrained(exported)("white petals with red edges", num_images_per_prompt=2, output_type="np").images
        assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()

    # The attention run's saved encoder (pooling="positions") reused without attention: Reed's mean, not the states.
    without = [*train_args, "--text_encoder_path", str(tmp_path / "run"), "--max_train_steps", "2", "--checkpointing_steps", "2"]
    run(without, tmp_path / "without")
    plain = GanClsPipeline.from_pretrained(tmp_path / "without")
    assert plain.generator.config.text_embed_dim == config.embed_dim and plain.text_encoder.config.pooling == "mean"

    at = train_args.index("--text_encoder_path")
    pooled = [*train_args[:at], *train_args[at + 2 :], "--text_encoder", "bert-base-uncased", "--text_attention_heads", "2"]
    refused = run(pooled, tmp_path / "pooled", check=False)
    assert refused.returncode != 0 and "bert-base-uncased gives one pooled embedding" in refused.stderr


def test_tiny_run_ends_with_a_loadable_pipeline(uninterrupted_run):
    pipeline = GanClsPipeline.from_pretrained(uninterrupted_run)
    images = pipeline("a flower with five red petals", num_images_per_prompt=2, output_type="np").images
    assert images.shape == (2, 64, 64, 3)

    card = (uninterrupted_run / "README.md").read_text()
    assert "accelerate launch train_accelerate.py --recipe t2i-v8 --dataset_name" in card and f"| steps | {STEPS} |" in card
    assert "not on Oxford-102" in card  # the synthetic set is named as such
    # The default recipe trains GAN-CLS alone (no GAN-INT terms), and the card says so.
    assert "trained with GAN-CLS (Reed" in card and "gan-int-cls" not in card
    assert [p.name for p in list_checkpoints(uninterrupted_run)][-1] == f"checkpoint-{STEPS}"
    # Safetensors and JSON only: accelerate's save_state would have added optimizer.bin and random_states_0.pkl.
    assert {p.suffix for c in list_checkpoints(uninterrupted_run) for p in c.iterdir()} == {".safetensors", ".json"}
    assert sorted((uninterrupted_run / "samples").glob("*.png"))  # validation grids
    summary = json.loads((uninterrupted_run / "training_summary.json").read_text())
    assert set(summary["final_losses"]) >= {"loss_d", "loss_g"}


def _kill_when(process: subprocess.Popen, ready, delay: float) -> bool:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` first holds; False if it finished first."""
    while not ready():
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def test_killed_and_resumed_run_matches_an_uninterrupted_one(train_args, uninterrupted_run, tmp_path):
    rng = random.Random(0)
    checkpoint_exists = lambda step: (lambda: (tmp_path / f"checkpoint-{step}").is_dir())  # noqa: E731
    saving = lambda: any(tmp_path.glob(".checkpoint-*.partial"))  # noqa: E731
    kill_points = [(checkpoint_exists(3), rng.uniform(0, 0.3)), (saving, 0.0), (checkpoint_exists(9), rng.uniform(0, 0.3))]
    kills = 0
    for ready, delay in kill_points:
        args = [*train_args, "--resume_from_checkpoint", "latest", "--output_dir", str(tmp_path)]
        process = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills += _kill_when(process, ready, delay)
    assert kills == 3
    assert not (tmp_path / "model_index.json").exists()  # it never got to the end

    last_checkpoint = list_checkpoints(tmp_path)[-1]
    seconds_before = json.loads((last_checkpoint / "training_state.json").read_text())["train_seconds"]
    run([*train_args, "--resume_from_checkpoint", "latest"], tmp_path)

    assert_identical(final_state(tmp_path), final_state(uninterrupted_run))
    # The card's wall time counts the killed runs' training too, not only the last run's.
    assert json.loads((tmp_path / "training_summary.json").read_text())["wall_time_hours"] * 3600 > seconds_before > 0


def test_a_finished_run_resumed_again_takes_no_more_steps(train_args, uninterrupted_run, tmp_path):
    # As a run killed right after its last checkpoint: only the pipeline is left to save, from the same weights.
    shutil.copytree(list_checkpoints(uninterrupted_run)[-1], tmp_path / f"checkpoint-{STEPS}")
    result = run([*train_args, "--resume_from_checkpoint", "latest"], tmp_path)
    assert f"is the end of this run (step {STEPS}): no more steps" in result.stdout
    assert_identical(final_state(tmp_path), final_state(uninterrupted_run))
    assert list((tmp_path / "samples").glob(f"*_step_{STEPS:07d}.png"))  # the last grid, which the kill may have cut
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["training_steps"] == STEPS and set(summary["final_losses"]) >= {"loss_d", "loss_g"}


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(train_args, uninterrupted_run, tmp_path):
    args = [*train_args, "--output_dir", str(tmp_path)]
    # A file-size limit makes writes fail like a full disk (EFBIG instead of ENOSPC); SIGXFSZ must be ignored
    # so the write returns an error instead of killing the process.
    process = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
    while not (tmp_path / "checkpoint-6").is_dir() and process.poll() is None:
        time.sleep(0.002)
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
    output, _ = process.communicate(timeout=300)

    assert process.returncode != 0
    assert "File too large" in output or "failed writing" in output.lower()
    survivors = list_checkpoints(tmp_path)
    assert survivors and survivors[-1].name in ("checkpoint-6", "checkpoint-9")
    assert not list(tmp_path.glob(".checkpoint-*.partial"))
    for name in ("model.safetensors", "model_1.safetensors", "ema_generator.safetensors"):
        load_file(survivors[-1] / name)  # intact

    run([*train_args, "--resume_from_checkpoint", "latest"], tmp_path)
    assert_identical(final_state(tmp_path), final_state(uninterrupted_run))


def _write_legacy_checkpoint(checkpoint: Path, tripwire: Path | None = None) -> None:
    """Turn a checkpoint into what t2i wrote before its own safetensors state: accelerate's real writer puts the
    optimizer states in optimizer*.bin and the global random streams in random_states_0.pkl (torch.save pickles)."""
    from types import SimpleNamespace
    from accelerate.checkpointing import save_accelerator_state
    from safetensors import safe_open
    from t2i.training.checkpoints import optimizer_state_from_safetensors, set_global_rng_state

    def read(path):
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()

    optimizers = [SimpleNamespace(state_dict=lambda s=optimizer_state_from_safetensors(*read(checkpoint / name)): s)
                  for name in ("optimizer.safetensors", "optimizer_1.safetensors")]
    rng, metadata = read(checkpoint / "t2i_rng_0.safetensors")
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    set_global_rng_state(rng, metadata)  # accelerate's writer records the global streams as they are now
    save_accelerator_state(str(checkpoint), [], optimizers, [], [], process_index=0, step=0)
    torch.set_rng_state(saved[0]), np.random.set_state(saved[1]), random.setstate(saved[2])
    for name in ("optimizer.safetensors", "optimizer_1.safetensors"):
        (checkpoint / name).unlink()
    save_file({k: v for k, v in rng.items() if not k.startswith("global/")}, str(checkpoint / "t2i_rng_0.safetensors"))
    if tripwire is not None:
        (checkpoint / "random_states_0.pkl").write_bytes(pickle.dumps(_Tripwire(tripwire)))


@pytest.mark.slow  # the same checks run in seconds in tests/test_checkpoints.py; this is the real launch
def test_a_pickled_checkpoint_is_refused_unread_then_converted_and_resumed_exactly(train_args, uninterrupted_run, tmp_path):
    shutil.copytree(list_checkpoints(uninterrupted_run)[2], tmp_path / "checkpoint-9")
    _write_legacy_checkpoint(tmp_path / "checkpoint-9", tripwire=tmp_path / "unpickled")
    refused = run([*train_args, "--resume_from_checkpoint", "latest"], tmp_path, check=False)
    assert refused.returncode != 0 and "optimizer.bin, optimizer_1.bin, random_states_0.pkl" in refused.stderr
    assert f"python -m t2i.training convert {tmp_path / 'checkpoint-9'}" in refused.stderr
    assert "steps/epoch" not in refused.stdout and not (tmp_path / "unpickled").exists()

    # The converter reads pickles with torch's weights-only loader: code in one is refused, and nothing changes.
    convert = [sys.executable, "-m", "t2i.training", "convert", str(tmp_path / "checkpoint-9")]
    malicious = subprocess.run(convert, capture_output=True, text=True, cwd=REPO)
    assert malicious.returncode == 1 and "refused by torch's weights-only loader" in malicious.stderr
    assert "Treat it as untrusted" in malicious.stderr and "weights_only set to False" not in malicious.stderr
    assert not (tmp_path / "unpickled").exists() and (tmp_path / "checkpoint-9" / "optimizer.bin").is_file()
    assert not (tmp_path / "checkpoint-9" / "optimizer.safetensors").exists()

    shutil.rmtree(tmp_path / "checkpoint-9")
    shutil.copytree(list_checkpoints(uninterrupted_run)[2], tmp_path / "checkpoint-9")
    _write_legacy_checkpoint(tmp_path / "checkpoint-9")  # the same checkpoint with honest pickles
    (tmp_path / "checkpoint-9" / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Tripwire(tmp_path / "unpickled")))
    converted = subprocess.run(convert, capture_output=True, text=True, cwd=REPO, check=True)
    assert "converted optimizer.bin, optimizer_1.bin, random_states_0.pkl" in converted.stdout
    assert "left untouched and never read" in converted.stdout and "custom_checkpoint_0.pkl" in converted.stdout
    (tmp_path / "checkpoint-9" / "custom_checkpoint_0.pkl").unlink()
    assert {p.suffix for p in (tmp_path / "checkpoint-9").iterdir()} == {".safetensors", ".json"}
    run([*train_args, "--resume_from_checkpoint", "latest"], tmp_path)
    assert_identical(final_state(tmp_path), final_state(uninterrupted_run))


@pytest.mark.slow  # the same checks run in seconds in tests/test_checkpoints.py; this is the real launch
def test_a_checkpoint_with_another_models_weights_is_refused_by_name(train_args, uninterrupted_run, tmp_path):
    shutil.copytree(list_checkpoints(uninterrupted_run)[2], tmp_path / "checkpoint-9")
    weights = load_file(tmp_path / "checkpoint-9" / "model_1.safetensors")
    weights["not_a_layer.weight"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "checkpoint-9" / "model_1.safetensors"))
    refused = run([*train_args, "--resume_from_checkpoint", "latest"], tmp_path, check=False)
    assert refused.returncode != 0
    assert "checkpoint-9/model_1.safetensors does not fit this run: Error(s) in loading state_dict for GanClsDiscriminator" in refused.stderr
    assert "not_a_layer" in refused.stderr

    (tmp_path / "checkpoint-9" / "optimizer.safetensors").write_bytes(b"\x00" * 7)  # truncated
    refused = run([*train_args, "--resume_from_checkpoint", "latest"], tmp_path, check=False)
    assert refused.returncode != 0 and "checkpoint-9/optimizer.safetensors: missing or unreadable" in refused.stderr
    assert "steps/epoch" not in refused.stdout  # refused before the data was loaded


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_cpu_run_keeps_ranks_identical(train_args, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()), SCRIPT, *train_args,
        "--max_train_steps", "6", "--output_dir", str(tmp_path),
        # Hard and counterfactual negatives and caption fragments are picked on the global batch, GAN-INT's and the
        # counterfactual fakes' shares of it per process; both ranks must still agree on every weight (G's pass scores
        # a second text block for the contrastive hard negatives, still one D forward).
        "--hard_negatives", "4", "--counterfactual_negatives", "0.5", "--fragment_captions", "0.5",
        "--counterfactual_exchange", "0.5", "--counterfactual_plausible", "--counterfactual_near_colors", "3", "--counterfactual_fakes", "0.5",
        "--contrastive_hard_negatives",
        "--fusion", "affine", "--polar_harmonics", "2", "--polar_antialias", "--gan_int", "--int_fraction", "0.5",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generator weights identical on all 2 rank(s): True" in result.stdout
    assert "global batch 32" in result.stdout
    assert re.search(r"counterfactual negatives: \d+ of \d+ captions have a swappable word", result.stdout)
    assert re.search(r"caption fragments: \d+ distinct spans of the \d+ training captions", result.stdout)
    config = GanClsPipeline.from_pretrained(tmp_path).generator.config
    assert config.ngf == 8 and config.polar_harmonics == 2 and config.polar_antialias is True


def test_turning_a_feature_off_drops_the_recipes_refinements_of_it(tiny_synthetic_dataset):
    """t2i-v5 sets polar channels, mode seeking on mixtures, two projection scales and three-caption mixtures; each
    refines a feature, and turning that feature off on the command line turns the refinement off with it."""
    def parse(*flags):
        return train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), "--recipe", "t2i-v5", *flags])

    assert parse("--fusion", "input").polar_harmonics == 0
    assert parse("--mode_seeking_weight", "0").mode_seeking_mixtures is False
    assert parse("--no-gan_int").mode_seeking_mixtures is False
    assert parse("--conditioning", "concat").projection_scales == 1
    assert parse("--int_beta", "0.5").int_captions == 2  # Reed's GAN-INT: midpoints of two captions
    untouched = parse()
    assert (untouched.polar_harmonics, untouched.mode_seeking_mixtures, untouched.projection_scales, untouched.int_captions) == (6, True, 2, 3)
    # Typed out, the same conflicts are refused (the command line is not second-guessed).
    for flags in (("--fusion", "input", "--polar_harmonics", "6"), ("--mode_seeking_weight", "0", "--mode_seeking_mixtures"),
                  ("--conditioning", "concat", "--projection_scales", "2"), ("--int_beta", "0.5", "--int_captions", "3")):
        with pytest.raises(SystemExit):
            parse(*flags)


def test_home_relative_paths_are_expanded(tiny_synthetic_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "encoder").mkdir()
    args = train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), "--output_dir=~/out",
                                        "--text_encoder_path=~/encoder", "--cache_dir", "~/cache"])
    assert (args.output_dir, args.text_encoder_path, args.cache_dir) == tuple(str(tmp_path / n) for n in ("out", "encoder", "cache"))


def test_recipe_t2i_v8_is_t2i_v7_with_the_contrastive_term_and_mode_seeking(tiny_synthetic_dataset):
    v7, v8 = (train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), "--recipe", recipe]) for recipe in ("t2i-v7", "t2i-v8"))
    assert {k for k in vars(v7) if getattr(v7, k) != getattr(v8, k)} == {"recipe", "contrastive_weight", "mode_seeking_weight"}
    assert (v8.contrastive_weight, v8.contrastive_generator, v8.mode_seeking_weight) == (1.0, True, 0.5)
    # The term scores pairs by the projection: Reed's concatenation D drops it, unless it is typed out (refused).
    concat = train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), "--recipe", "t2i-v8", "--conditioning", "concat"])
    assert concat.contrastive_weight == 0.0
    with pytest.raises(SystemExit):
        train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), "--conditioning", "concat", "--contrastive_weight", "1"])


def test_recipe_t2i_v10_the_default_is_t2i_v8_with_fusion_masks_and_the_output_palette(tiny_synthetic_dataset):
    def parse(*flags):
        return train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), *flags])

    v8, v10 = parse("--recipe", "t2i-v8"), parse()
    assert v10.recipe == "t2i-v10" == train_accelerate.DEFAULT_RECIPE
    assert {k for k in vars(v8) if getattr(v8, k) != getattr(v10, k)} == {"recipe", "deep_fusion", "fusion_masks", "output_palette"}
    assert (v10.deep_fusion, v10.fusion_masks, v10.output_palette) == (True, 3, 4)
    # They refine Reed's generator: the text-affine generator drops all three, and no deep fusion drops its masks.
    affine = parse("--fusion", "affine")
    assert (affine.deep_fusion, affine.fusion_masks, affine.output_palette) == (False, 0, 0)
    plain = parse("--no-deep_fusion")
    assert (plain.deep_fusion, plain.fusion_masks, plain.output_palette) == (False, 0, 4)
    for flags in (("--fusion", "affine", "--deep_fusion"), ("--no-deep_fusion", "--fusion_masks", "3"), ("--fusion", "affine", "--output_palette", "4")):
        with pytest.raises(SystemExit):
            parse(*flags)


def test_recipe_t2i_v11_is_t2i_v10_with_word_level_attention_off_with_a_pooled_encoder(tiny_synthetic_dataset, tiny_text_encoder, tmp_path, capsys):
    def parse(*flags):
        return train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), "--recipe", "t2i-v11", *flags])

    v10 = train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), "--recipe", "t2i-v10", "--text_encoder_path", str(tiny_text_encoder)])
    v11 = parse("--text_encoder_path", str(tiny_text_encoder))
    assert {k for k in vars(v10) if getattr(v10, k) != getattr(v11, k)} == {"recipe", "text_attention_heads", "text_positions"}
    assert v11.text_attention_heads == 4 and v11.text_positions == CharCnnRnnConfig(**TINY_TEXT_ENCODER_CONFIG).num_positions
    assert parse("--text_encoder", "char-cnn-rnn").text_positions == CharCnnRnnConfig().num_positions
    # A pooled text encoder (the MiniLM default) has no position states: the recipe's attention goes off, and
    # typed out it is refused before any work.
    assert (parse().text_attention_heads, parse().text_positions) == (0, 0)
    assert "--recipe t2i-v11's text attention is off" in capsys.readouterr().err
    for flags, message in ((("--text_attention_heads", "4"), "gives one pooled embedding"),
                           (("--text_encoder_path", str(tmp_path)), "gives none"),  # a folder with no text encoder
                           (("--text_encoder_path", "runs/missing"), "no such folder"),  # not taken for a Hub id
                           (("--text_encoder", "char-cnn-rnn", "--char_cnn_rnn_config", "[1]"), "must be a JSON object"),
                           (("--text_encoder", "char-cnn-rnn", "--char_cnn_rnn_config", '{"pool_size": 0}'), "not a char-CNN-RNN"),
                           (("--text_encoder", "char-cnn-rnn", "--char_cnn_rnn_config", '{"conv_channels": 5}'), "not a char-CNN-RNN"),
                           (("--text_encoder", "char-cnn-rnn", "--char_cnn_rnn_config", '{"max_chars": 10}', "--text_attention_heads", "2"),
                            "char-cnn-rnn gives -4 position(s)"),
                           (("--text_encoder_path", str(tiny_text_encoder), "--text_attention_heads", "-1"), "must be ≥ 0")):
        with pytest.raises(SystemExit):
            parse(*flags)
        assert message in capsys.readouterr().err, flags


def test_recipe_t2i_v5_is_t2i_v4_with_mode_seeking_on_mixtures_and_polar_channels(tiny_synthetic_dataset):
    v4, v5 = (train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), "--recipe", recipe]) for recipe in ("t2i-v4", "t2i-v5"))
    assert {k for k in vars(v4) if getattr(v4, k) != getattr(v5, k)} == {"recipe", "mode_seeking_mixtures", "polar_harmonics"}
    assert v5.mode_seeking_mixtures is True and v5.polar_harmonics == 6 and v5.fusion == "affine"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train_batch_size", "0"], "--train_batch_size must be ≥ 1"),
        (["--resolution", "96"], "invalid choice: 96"),
        (["--int_beta", "1.5"], "--int_beta: must be in [0, 1] or 'random'"),
        (["--int_beta", "nan"], "--int_beta: must be in [0, 1] or 'random'"),
        (["--int_beta", "half"], "expected a number in [0, 1] or 'random'"),
        (["--int_captions", "3", "--int_beta", "0.5"], "> 2 only with --int_beta random"),
        (["--int_captions", "1", "--int_beta", "random"], "must be ≥ 2"),
        (["--int_fraction", "0"], "--int_fraction must be in (0, 1]"),
        (["--int_fraction", "nan"], "--int_fraction must be in (0, 1]"),
        (["--int_fraction", "0.5", "--no-gan_int"], "--int_fraction 0.5 sizes GAN-INT's share of the batch: it needs --gan_int"),
        (["--unconditional_weight", "1", "--conditioning", "concat", "--projection_scales", "1"], "--unconditional_weight needs --conditioning projection"),
        (["--unconditional_weight", "-1"], "--unconditional_weight must be ≥ 0"),
        (["--contrastive_weight", "1", "--conditioning", "concat", "--projection_scales", "1"], "--contrastive_weight needs --conditioning projection"),
        (["--contrastive_weight", "-1"], "--contrastive_weight must be ≥ 0"),
        (["--contrastive_weight", "0", "--no-contrastive_generator"], "--no-contrastive_generator keeps the contrastive term for D alone"),
        (["--contrastive_weight", "nan"], "--contrastive_weight must be a finite number"),
        (["--contrastive_weight", "0", "--contrastive_hard_negatives"], "--contrastive_hard_negatives adds candidates to the contrastive term"),
        (["--counterfactual_exchange", "0.5"], "--counterfactual_exchange shapes the counterfactual captions"),
        (["--counterfactual_plausible"], "--counterfactual_plausible shapes the counterfactual captions"),
        (["--counterfactual_near_colors", "3"], "--counterfactual_near_colors shapes the counterfactual captions"),
        (["--counterfactual_negatives", "1", "--counterfactual_near_colors", "-1"], "--counterfactual_near_colors must be >= 0"),
        (["--learning_rate", "1e39"], "--learning_rate must be at most 3.4e+38"),
        (["--contrastive_weight=-1e39"], "--contrastive_weight must be at most 3.4e+38"),
        (["--counterfactual_fakes", "-1"], "--counterfactual_fakes must be a probability"),
        (["--reseed_on_resume"], "--reseed_on_resume draws fresh random streams for a resumed run"),
        (["--counterfactual_negatives", "1", "--counterfactual_exchange", "2"], "--counterfactual_exchange must be a probability"),
        (["--label_smoothing", "1"], "--label_smoothing must be in"),
        (["--loss", "wgan"], "invalid choice: 'wgan'"),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], "no such checkpoint folder"),
        (["--text_encoder_path", "/no/such/encoder"], "--text_encoder_path '/no/such/encoder': no such folder"),
        (["--validation_prompts", "ok", " "], "empty prompts"),
        (["--char_cnn_rnn_config", '{"layers": 3}'], "unknown keys ['layers']"),
        (["--matching_loss_weight", "1"], "--matching_loss_weight needs a joint embedding's image encoder"),
        (["--matching_loss_weight", "1", "--text_encoder_path", "."], "--matching_loss_weight needs a joint embedding's image encoder"),
        (["--mode_seeking_weight", "-1"], "must be ≥ 0"),
        (["--mode_seeking_mixtures", "--no-gan_int"], "--mode_seeking_mixtures pairs images on GAN-INT mixtures"),
        (["--polar_harmonics", "4", "--fusion", "input"], "> 0 needs --fusion affine"),
        (["--polar_harmonics", "-1"], "must be ≥ 0"),
        (["--discriminator_learning_rate", "0"], "--discriminator_learning_rate must be > 0, got 0.0"),
        (["--discriminator_warmup_steps", "-1"], "--discriminator_warmup_steps must be ≥ 0, got -1"),
        (["--residual_blocks", "--fusion", "input"], "--residual_blocks shapes the text-affine blocks: it needs --fusion affine"),
        (["--transposed_up_blocks", "--fusion", "input"], "--transposed_up_blocks shapes the text-affine blocks: it needs --fusion affine"),
        (["--no-deep_fusion", "--fusion_masks", "3"], "--fusion_masks 3 makes --deep_fusion's affines spatial: it needs --deep_fusion"),
        (["--deep_fusion", "--fusion_masks", "1"], "--fusion_masks must be a whole number from 2 to 16 (0 = off), got 1"),
        (["--output_palette", "4", "--fusion", "affine"], "--output_palette 4 paints the last layer of Reed's generator: it needs --fusion input"),
        (["--output_palette", "3000"], "--output_palette must be a whole number from 2 to 16 (0 = off), got 3000"),
        (["--hard_negatives", "0"], "--hard_negatives must be ≥ 1, got 0"),
        (["--counterfactual_negatives", "1.5"], "--counterfactual_negatives must be a probability in [0, 1], got 1.5"),
        (["--counterfactual_negatives", "nan"], "--counterfactual_negatives must be a probability in [0, 1], got nan"),
        (["--fragment_captions", "1.5"], "--fragment_captions must be a probability in [0, 1], got 1.5"),
        (["--mode_seeking_weight", "nan"], "--mode_seeking_weight must be a finite number"),
        (["--matching_loss_weight", "inf"], "--matching_loss_weight must be a finite number"),
        (["--polar_antialias", "--polar_harmonics", "0"], "--polar_antialias windows the polar channels: it needs --polar_harmonics K > 0"),
        (["--mode_seeking_scale", "3"], "must be ≥ 1 and divide --resolution 64"),
        (["--mode_seeking_weight", "0", "--gan_int", "--mode_seeking_mixtures"], "they need --mode_seeking_weight > 0"),
        (["--conditioning", "attention"], "invalid choice: 'attention'"),
        # Combinations that could only fail after data and encoder loading (Hardening, item 5)
        (["--train_batch_size", "1", "--text_batch_norm"], "--text_batch_norm needs more than one caption per batch"),
        (["--train_batch_size", "1", "--no-text_batch_norm", "--mode_seeking_weight", "0.5"], "--train_batch_size 2 or more"),
        (["--train_batch_size", "1", "--no-text_batch_norm", "--mode_seeking_weight", "0", "--contrastive_weight", "1"], "--train_batch_size 2 or more"),
        (["--projection_scales", "2", "--conditioning", "concat"], "--projection_scales 2 needs --conditioning projection"),
        (["--projection_scales", "7"], "--projection_scales must be between 1 and 4"),
        (["--projection_regions", "3", "--conditioning", "concat"], "--projection_regions 3 needs --conditioning projection"),
        (["--projection_regions", "1"], "--projection_regions must be a whole number from 2 to 16 (0 = off), got 1"),
        (["--projection_regions", "3", "--recipe", "reed2016"], "--projection_regions 3 needs --conditioning projection (--recipe reed2016 sets --conditioning concat)"),
        (["--evaluation_metric", "beauty"], "--evaluation_metric 'beauty': choose one of"),
        (["--evaluation_steps", "0"], "--evaluation_steps must be ≥ 1"),
        (["--max_train_minutes", "0"], "--max_train_minutes must be > 0"),
        (["--diff_augment", "color"], "invalid choice: 'color'"),
        (["--fusion", "attention"], "invalid choice: 'attention'"),
        (["--recipe", "stackgan"], "invalid choice: 'stackgan'"),
    ],
)
def test_bad_flags_fail_before_any_work(flags, message, tiny_synthetic_dataset, capsys):
    with pytest.raises(SystemExit):
        train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), *flags])
    assert message in capsys.readouterr().err


def test_a_batch_of_one_trains_when_nothing_needs_batch_statistics(tiny_synthetic_dataset, tiny_text_encoder, tmp_path):
    result = run(["--dataset_name", str(tiny_synthetic_dataset), "--text_encoder_path", str(tiny_text_encoder), "--ngf", "8",
                  "--ndf", "8", "--train_batch_size", "1", "--no-text_batch_norm", "--mode_seeking_weight", "0",
                  "--contrastive_weight", "0", "--max_train_steps", "2", "--report_to", "none", "--cache_dir", str(tmp_path / "cache")], tmp_path / "out")
    assert "generator weights identical on all 1 rank(s): True" in result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_few_training_steps_on_cuda_in_bf16(train_args, tmp_path):
    # The round-3 options too: the polar term's broadcast add, SN's power iteration and pooled mode seeking.
    options = ["--fusion", "affine", "--polar_harmonics", "6", "--spectral_norm", "--conditioning", "projection",
               "--mode_seeking_weight", "0.5", "--mode_seeking_mixtures", "--mode_seeking_scale", "8"]
    result = run([*train_args, "--max_train_steps", "4", "--mixed_precision", "bf16", "--channels_last", *options], tmp_path)
    assert "generator weights identical on all 1 rank(s): True" in result.stdout
    state = load_file(tmp_path / "generator" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_bad_dataset_paths_fail_before_any_work(capsys, tmp_path):
    for name in ["/no/such/dataset", "./missing/folder", "not a hub id"]:
        with pytest.raises(SystemExit):
            train_accelerate.parse_args(["--dataset_name", name])
        assert "no such folder or file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_accelerate.parse_args(["--dataset_name", str(tmp_path), "--output_dir", __file__])
    assert "is a file" in capsys.readouterr().err


def test_char_cnn_rnn_phase_trains_then_freezes_the_text_encoder(tiny_synthetic_dataset, tmp_path):
    args = [
        "--dataset_name", str(tiny_synthetic_dataset), "--text_encoder", "char-cnn-rnn",
        "--char_cnn_rnn_config", json.dumps(TINY_TEXT_ENCODER_CONFIG), "--text_encoder_steps", "20", "--text_encoder_batch_size", "8",
        "--ngf", "8", "--ndf", "8", "--train_batch_size", "16", "--max_train_steps", "2", "--report_to", "none",
        "--cache_dir", str(tmp_path / "cache"),
    ]
    run(args, tmp_path / "out")

    metrics = json.loads((tmp_path / "out" / "char_cnn_rnn" / "joint_embedding_metrics.json").read_text())
    assert metrics["steps"] == 20 and 0.0 <= metrics["zero_shot_top1"] <= 1.0  # held-out test classes
    card = (tmp_path / "out" / "README.md").read_text()
    assert "text_encoder_zero_shot_top1" in card and "char-CNN-RNN (trained here, DS-SJE)" in card
    pipeline = GanClsPipeline.from_pretrained(tmp_path / "out")
    trained = load_file(tmp_path / "out" / "char_cnn_rnn" / "model.safetensors")
    assert type(pipeline.text_encoder).__name__ == "CharCnnRnnEncoder"
    assert all(torch.equal(pipeline.text_encoder.state_dict()[k], v) for k, v in trained.items())  # frozen after phase 1
    # θ travels with φ and with the pipeline, for R-precision in t2i.evaluation
    image_encoder = load_joint_image_encoder(tmp_path / "out")
    assert image_encoder is not None and image_encoder.config.embed_dim == TINY_TEXT_ENCODER_CONFIG["embed_dim"]
    assert (tmp_path / "out" / "char_cnn_rnn" / JOINT_IMAGE_ENCODER_FOLDER / "config.json").is_file()

    # A later run that reuses this text encoder keeps its joint-embedding metrics in the card.
    reuse = [*args[:2], "--text_encoder_path", str(tmp_path / "out" / "char_cnn_rnn"), *args[10:]]
    run(reuse, tmp_path / "reuse")
    reused_card = (tmp_path / "reuse" / "README.md").read_text()
    assert "text_encoder_zero_shot_top1" in reused_card and "char-CNN-RNN (DS-SJE)" in reused_card
    assert (tmp_path / "reuse" / JOINT_IMAGE_ENCODER_FOLDER / "config.json").is_file()


def test_char_cnn_rnn_distilled_from_a_teacher(tiny_synthetic_dataset, tiny_text_encoder, tmp_path):
    args = [
        "--dataset_name", str(tiny_synthetic_dataset), "--text_encoder", "char-cnn-rnn", "--text_encoder_teacher", str(tiny_text_encoder),
        "--char_cnn_rnn_config", json.dumps({**TINY_TEXT_ENCODER_CONFIG, "rnn_type": "gru"}), "--text_encoder_steps", "30",
        "--text_encoder_batch_size", "8", "--ngf", "8", "--ndf", "8", "--train_batch_size", "16", "--max_train_steps", "2",
        "--report_to", "none", "--cache_dir", str(tmp_path / "cache"),
    ]
    run(args, tmp_path / "out")

    metrics = json.loads((tmp_path / "out" / "char_cnn_rnn" / "joint_embedding_metrics.json").read_text())
    assert metrics["distillation_steps"] == 30 and metrics["distillation_train_loss"] > 0  # learning: tests/test_text_distillation.py
    assert -1.0 <= metrics["distillation_test_cosine"] <= 1.0 and 0.0 <= metrics["zero_shot_top1"] <= 1.0
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"distilled from {tiny_text_encoder}" in card and "text_encoder_distillation_test_cosine" in card
    pipeline = GanClsPipeline.from_pretrained(tmp_path / "out")
    assert pipeline.text_encoder.config.rnn_type == "gru"
    # θ is fitted to the distilled φ, which it does not change: φ in the pipeline is the distilled one.
    distilled = load_file(tmp_path / "out" / "char_cnn_rnn" / "model.safetensors")
    assert all(torch.equal(pipeline.text_encoder.state_dict()[k], v) for k, v in distilled.items())
    assert load_joint_image_encoder(tmp_path / "out").config.embed_dim == TINY_TEXT_ENCODER_CONFIG["embed_dim"]


def test_teacher_needs_a_new_char_cnn_rnn(tiny_synthetic_dataset, tiny_text_encoder, capsys):
    for flags in (["--text_encoder_teacher", "x/y"], ["--text_encoder", "char-cnn-rnn", "--text_encoder_teacher", "x/y",
                                                       "--text_encoder_path", str(tiny_text_encoder)]):
        with pytest.raises(SystemExit):
            train_accelerate.parse_args(["--dataset_name", str(tiny_synthetic_dataset), *flags])
        assert "--text_encoder_teacher distils into a new char-CNN-RNN" in capsys.readouterr().err


# With word-level attention too (slow: its text-encoder phase is another 30 s): the char-CNN-RNN trained here first
# gives G and D its position states, and θ's matching loss reads their mean, Reed's embedding, which θ matched.
@pytest.mark.parametrize("attention_heads", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_conditioning_flags_train_a_loadable_pipeline(tiny_synthetic_dataset, tmp_path, attention_heads):
    """Text BatchNorm, the projection discriminator, the matching loss through θ and mode seeking, together."""
    args = [
        "--dataset_name", str(tiny_synthetic_dataset), "--text_encoder", "char-cnn-rnn", "--char_cnn_rnn_config", json.dumps(TINY_TEXT_ENCODER_CONFIG),
        "--text_encoder_steps", "10", "--text_encoder_batch_size", "8", "--ngf", "8", "--ndf", "8", "--train_batch_size", "16",
        "--max_train_steps", "3", "--checkpointing_steps", "3", "--report_to", "none", "--cache_dir", str(tmp_path / "cache"),
        "--text_batch_norm", "--conditioning", "projection", "--matching_loss_weight", "1", "--mode_seeking_weight", "1",
        "--text_attention_heads", str(attention_heads),
    ]
    run(args, tmp_path / "out")
    pipeline = GanClsPipeline.from_pretrained(tmp_path / "out")
    assert pipeline.generator.config.text_batch_norm is True
    assert pipeline.generator.config.text_attention_heads == attention_heads
    assert pipeline.text_encoder.config.pooling == ("positions" if attention_heads else "mean")
    discriminator = load_file(list_checkpoints(tmp_path / "out")[-1] / "model_1.safetensors")
    assert "text_to_features.weight" in discriminator and not any(k.startswith("joint.") for k in discriminator)
    images = pipeline("a flower with five red petals", num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 64, 64, 3) and not np.allclose(images[0], images[1])


def test_evaluation_steps_keep_the_best_generator_not_the_last(train_args, tmp_path):
    import re

    result = run([*train_args, "--max_train_steps", "8", "--evaluation_steps", "2", "--evaluation_samples", "40",
                  "--evaluation_metric", "text_image_agreement_mean"], tmp_path)
    log = result.stdout + result.stderr
    scores = {int(step): float(value) for step, value in re.findall(r"step (\d+): text_image_agreement_mean = ([0-9.]+)", log)}
    assert sorted(scores) == [2, 4, 6, 8]
    best_step = max(scores, key=lambda step: (scores[step], -step))  # the first of equal scores stays the best
    record = json.loads((tmp_path / "best_generator" / "evaluation.json").read_text())
    assert record["step"] == best_step and record["metric"] == "text_image_agreement_mean"
    assert record["value"] == pytest.approx(scores[best_step], abs=1e-4)
    # The pipeline folder ends with the best generator's weights, and the checkpoints carry the record for a resume.
    saved = load_file(tmp_path / "generator" / "diffusion_pytorch_model.safetensors")
    best = load_file(tmp_path / "best_generator" / "diffusion_pytorch_model.safetensors")
    assert_identical(saved, best)
    assert json.loads((list_checkpoints(tmp_path)[-1] / "training_state.json").read_text())["best"]["step"] == best_step
    assert f"Saving the best generator: step {best_step}" in log

    # A second phase resumed from this run's last checkpoint into another folder (as the v6 default was made) takes
    # the best generator along: it still ends with the best, whether or not its own evaluations beat it.
    second = tmp_path / "second"
    result = run([*train_args, "--max_train_steps", "10", "--evaluation_steps", "2", "--evaluation_samples", "40",
                  "--resume_from_checkpoint", str(list_checkpoints(tmp_path)[-1]), "--counterfactual_negatives", "0.5"], second)
    log = result.stdout + result.stderr
    assert "copied: the best so far" in log
    (step_10,) = [float(v) for v in re.findall(r"step 10: text_image_agreement_mean = ([0-9.]+)", log)]
    expected = 10 if step_10 > scores[best_step] else best_step
    assert json.loads((second / "best_generator" / "evaluation.json").read_text())["step"] == expected
    assert_identical(load_file(second / "generator" / "diffusion_pytorch_model.safetensors"),
                     load_file(second / "best_generator" / "diffusion_pytorch_model.safetensors"))


def test_a_new_phase_draws_its_own_random_streams_only_with_reseed_on_resume(train_args, uninterrupted_run, tmp_path):
    """Resumed, a run replays the checkpoint's data order and noise, whatever --seed says (a killed run must); a new
    phase from another run's checkpoint with --reseed_on_resume draws them from --seed, so its seeds differ."""
    def phase(name: str, *flags: str) -> dict:
        out = tmp_path / name
        out.mkdir()
        shutil.copytree(uninterrupted_run / "checkpoint-9", out / "checkpoint-9")
        run([*train_args, "--resume_from_checkpoint", "latest", *flags], out)
        return weights(out)

    def weights(folder: Path) -> dict:  # the EMA generator's BatchNorm statistics are recalibrated from --seed at saving
        saved = load_file(folder / "generator" / "diffusion_pytorch_model.safetensors")
        return {k: v for k, v in saved.items() if "running_" not in k and "num_batches" not in k}

    uninterrupted = weights(uninterrupted_run)
    assert_identical(phase("restored", "--seed", "4"), uninterrupted)  # the checkpoint's streams: --seed has no effect
    seed_4, seed_5 = phase("seed4", "--seed", "4", "--reseed_on_resume"), phase("seed5", "--seed", "5", "--reseed_on_resume")
    assert any(not torch.equal(seed_4[k], uninterrupted[k]) for k in seed_4)
    assert any(not torch.equal(seed_4[k], seed_5[k]) for k in seed_4)


@pytest.mark.slow  # four tiny runs (50 s); grow_checkpoint's refusals run in seconds in tests/test_checkpoints.py
def test_a_checkpoint_grown_with_deep_fusion_draws_what_it_drew_and_resumes_with_the_flag(train_args, uninterrupted_run, tmp_path):
    import filecmp

    from t2i import GanClsGenerator
    from t2i.training import generator_config, grow_checkpoint

    source = uninterrupted_run / "checkpoint-9"
    grown = grow_checkpoint(source, tmp_path, "deep_fusion")
    assert grown == tmp_path / "checkpoint-9" and not list(tmp_path.glob(".*partial"))
    state = json.loads((grown / "training_state.json").read_text())
    assert state["model_config"] == {**json.loads((source / "training_state.json").read_text())["model_config"], "deep_fusion": True}
    for name in ("model.safetensors", "ema_generator.safetensors"):  # the generator and its EMA: every tensor kept, zeros added
        before, after = load_file(source / name), load_file(grown / name)
        assert_identical({k: after[k] for k in before}, before)
        added = set(after) - set(before)
        assert added and all(k.startswith("fusion_affines.") and not after[k].any() for k in added)
    for name in ("model_1.safetensors", "optimizer_1.safetensors", "t2i_rng_0.safetensors"):  # D and the streams, as they were
        assert filecmp.cmp(source / name, grown / name, shallow=False), name
    # The grown generator draws what the trained one drew.
    tensors = load_file(grown / "model.safetensors")
    models = []
    for flags in (json.loads((source / "training_state.json").read_text())["model_config"], state["model_config"]):
        model = GanClsGenerator(text_embed_dim=tensors["text_projection.0.weight"].shape[1], **generator_config(flags))
        model.load_state_dict(load_file(source / "model.safetensors") if not flags.get("deep_fusion") else tensors)
        models.append(model.eval())
    noise, text = torch.randn(4, 100, generator=torch.Generator().manual_seed(0)), torch.randn(4, tensors["text_projection.0.weight"].shape[1])
    assert torch.equal(models[0](noise, text), models[1](noise, text))
    with pytest.raises(ValueError, match="already has deep_fusion"):
        grow_checkpoint(grown, tmp_path / "again", "deep_fusion")
    # A text encoder the run trained itself comes along (a resume would train it again); a damaged file is named,
    # and a refusal leaves no new folder behind.
    run_copy = tmp_path / "run_copy"
    shutil.copytree(source, run_copy / "checkpoint-9")
    (run_copy / "char_cnn_rnn").mkdir()
    (run_copy / "char_cnn_rnn" / "config.json").write_text("{}")
    grow_checkpoint(str(run_copy / "checkpoint-9"), str(tmp_path / "with_encoder"), "deep_fusion")
    assert (tmp_path / "with_encoder" / "char_cnn_rnn" / "config.json").read_text() == "{}"
    for name in ("model.safetensors", "optimizer.safetensors"):
        damaged = tmp_path / f"damaged_{name}"
        shutil.copytree(source, damaged / "checkpoint-9")
        (damaged / "checkpoint-9" / name).write_bytes((source / name).read_bytes()[:1000])
        with pytest.raises(CheckpointError, match=f"{name}: missing or unreadable"):
            grow_checkpoint(damaged / "checkpoint-9", tmp_path / f"out_{name}", "deep_fusion")
        assert not (tmp_path / f"out_{name}").exists()
    swapped = tmp_path / "swapped"  # D's Adam state where G's should be: refused, not copied
    shutil.copytree(source, swapped / "checkpoint-9")
    shutil.copy(source / "optimizer_1.safetensors", swapped / "checkpoint-9" / "optimizer.safetensors")
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        grow_checkpoint(swapped / "checkpoint-9", tmp_path / "out_swapped", "deep_fusion")

    resume = [*train_args, "--resume_from_checkpoint", "latest"]
    refused = run(resume, tmp_path, check=False)  # without the flag the checkpoint holds another model
    assert refused.returncode != 0 and "deep_fusion True (now False)" in refused.stderr
    run([*resume, "--deep_fusion"], tmp_path)
    generator = GanClsPipeline.from_pretrained(tmp_path).generator
    assert generator.config.deep_fusion is True
    assert any(affine.weight.abs().sum() > 0 for affine in generator.fusion_affines)  # trained from step 9 on
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == f"checkpoint-{STEPS}"

    # Deep fusion grows on into spatial fusion masks (a count, not a flag), and that run resumes only with both flags.
    with pytest.raises(ValueError, match="fusion_masks must be a whole number from 2 to 16, got True"):
        grow_checkpoint(grown, tmp_path / "masked", "fusion_masks")
    masked = grow_checkpoint(grown, tmp_path / "masked", "fusion_masks", 2)
    assert json.loads((masked / "training_state.json").read_text())["model_config"] == {**state["model_config"], "fusion_masks": 2}
    before, after = load_file(grown / "model.safetensors"), load_file(masked / "model.safetensors")
    assert_identical({k: after[k] for k in before}, before)
    assert all(not after[k].any() for k in after if k.startswith("fusion_mask_affines."))
    refused = run(resume, tmp_path / "masked", check=False)
    assert refused.returncode != 0 and "fusion_masks 2 (now 0)" in refused.stderr
    run([*resume, "--deep_fusion", "--fusion_masks", "2"], tmp_path / "masked")
    generator = GanClsPipeline.from_pretrained(tmp_path / "masked").generator
    assert generator.config.fusion_masks == 2
    assert all(affine.weight.abs().sum() > 0 for affine in generator.fusion_mask_affines)  # trained from step 9 on

    # And on into an output palette. The grown G and its EMA copy draw what they drew, and share the new mask
    # predictor's fresh weights (an EMA blending G's into another random draw would mix two unrelated masks);
    # the run with all three options trains the palette's colours from zero.
    source = list_checkpoints(tmp_path / "masked")[-1]
    painted = grow_checkpoint(source, tmp_path / "painted", "output_palette", 3)
    state = json.loads((painted / "training_state.json").read_text())
    for name in ("model.safetensors", "ema_generator.safetensors"):
        tensors = load_file(painted / name)
        assert not tensors["palette_colors.weight"].any() and tensors["palette_masks.weight"].any()
        before, after = GanClsGenerator(text_embed_dim=text.shape[1], **generator_config(state["model_config"] | {"output_palette": 0})), \
            GanClsGenerator(text_embed_dim=text.shape[1], **generator_config(state["model_config"]))
        before.load_state_dict(load_file(source / name))
        after.load_state_dict(tensors)
        assert torch.equal(after.eval()(noise, text), before.eval()(noise, text)), name
    generator_tensors, ema_tensors = load_file(painted / "model.safetensors"), load_file(painted / "ema_generator.safetensors")
    assert all(torch.equal(generator_tensors[k], ema_tensors[k]) for k in generator_tensors if k.startswith("palette_"))
    refused = run([*resume, "--deep_fusion", "--fusion_masks", "2"], tmp_path / "painted", check=False)
    assert refused.returncode != 0 and "output_palette 3 (now 0)" in refused.stderr
    run([*resume, "--deep_fusion", "--fusion_masks", "2", "--output_palette", "3", "--max_train_steps", str(STEPS + 3)], tmp_path / "painted")
    generator = GanClsPipeline.from_pretrained(tmp_path / "painted").generator
    assert generator.config.output_palette == 3 and generator.palette_colors.weight.abs().sum() > 0


def test_a_checkpoint_exports_as_a_pipeline_with_its_generator_stored_in_float16(uninterrupted_run, tiny_text_encoder, tmp_path, capsys):
    from t2i.text_encoders import TextEncoder
    from t2i.training import export_checkpoint

    checkpoint = uninterrupted_run / "checkpoint-9"
    trained = load_file(checkpoint / "model.safetensors")  # G, not the EMA copy
    full, difference = export_checkpoint(checkpoint, tmp_path / "float32")
    assert difference == 0.0 and sorted(p.name for p in tmp_path.iterdir()) == ["float32"]  # no partial folder left
    umask = os.umask(0)
    os.umask(umask)
    # Readable by other users, as any new folder and file (mkdtemp makes 0700 folders, safetensors 0600 files).
    assert full.stat().st_mode & 0o777 == 0o777 & ~umask
    assert {f.stat().st_mode & 0o777 for f in full.rglob("*") if f.is_file()} == {0o666 & ~umask}
    assert_identical(load_file(full / "generator" / "diffusion_pytorch_model.safetensors"), trained)
    assert same_weights(full / "text_encoder", uninterrupted_run / "text_encoder")
    half, difference = export_checkpoint(checkpoint, tmp_path / "float16", generator_dtype=torch.float16)
    stored = load_file(half / "generator" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for k, v in stored.items() if "num_batches" not in k} == {torch.float16}
    size = {f: (f / "generator" / "diffusion_pytorch_model.safetensors").stat().st_size for f in (full, half)}
    assert size[half] < 0.55 * size[full]
    # Loaded as float32, holding the rounded weights, and drawing within a few pixel levels of the float32 weights.
    pipeline = GanClsPipeline.from_pretrained(half)
    assert pipeline.generator.dtype == pipeline.text_encoder.dtype == torch.float32
    assert_identical(pipeline.generator.state_dict(), {k: v.half().float() if v.is_floating_point() else v for k, v in trained.items()})
    assert 0.0 < difference < 5 / 255

    # A checkpoint records its text encoder, so an unfinished run exports with the run's --text_encoder_path, and
    # another encoder is refused even at the same width.
    state = json.loads((checkpoint / "training_state.json").read_text())
    assert state["text_encoder_fingerprint"] == TextEncoder.from_pretrained(str(tiny_text_encoder)).fingerprint()
    unfinished = tmp_path / "unfinished" / "checkpoint-9"
    shutil.copytree(checkpoint, unfinished)
    with pytest.raises(CheckpointError, match="holds no saved pipeline yet .* pass the run's --text_encoder_path"):
        export_checkpoint(unfinished, tmp_path / "default_encoder")
    export_checkpoint(unfinished, tmp_path / "given_encoder", text_encoder_path=tiny_text_encoder)
    other = TextEncoder.from_pretrained(str(tiny_text_encoder))
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    other.save_pretrained(tmp_path / "other_encoder")
    with pytest.raises(CheckpointError, match="is not the one .* was trained with"):
        export_checkpoint(unfinished, tmp_path / "other", text_encoder_path=tmp_path / "other_encoder")

    # Checkpoint averaging: the mean of G over checkpoints 6, 9 and 12 (in float64; integer tensors the last one's).
    from t2i.training import grow_checkpoint

    last = uninterrupted_run / f"checkpoint-{STEPS}"
    averaged, _ = export_checkpoint(last, tmp_path / "averaged", average_from=6)
    states = [load_file(uninterrupted_run / f"checkpoint-{step}" / "model.safetensors") for step in (6, 9, STEPS)]
    expected = {k: (sum(st[k].double() for st in states) / 3).float() if v.is_floating_point() else states[-1][k] for k, v in states[0].items()}
    assert_identical(load_file(averaged / "generator" / "diffusion_pytorch_model.safetensors"), expected)
    assert not all(torch.equal(expected[k], states[-1][k]) for k in expected)
    with pytest.raises(ValueError, match=r"holds only \['checkpoint-12'\] .* averaging needs two checkpoints or more"):
        export_checkpoint(last, tmp_path / "one", average_from=STEPS - 1)
    with pytest.raises(ValueError, match="average_from must be a step before checkpoint-12's"):
        export_checkpoint(last, tmp_path / "after", average_from=STEPS)
    with pytest.raises(ValueError, match=r"average_from must be a training step \(a whole number ≥ 0\), got -5"):
        export_checkpoint(last, tmp_path / "negative", average_from=-5)
    mixed = grow_checkpoint(last, tmp_path / "mixed", "deep_fusion").parent  # another model beside checkpoint-9
    shutil.copytree(checkpoint, mixed / "checkpoint-9")
    with pytest.raises(CheckpointError, match="record different model_configs: only checkpoints of one model average"):
        export_checkpoint(mixed / f"checkpoint-{STEPS}", tmp_path / "mixed_out", text_encoder_path=uninterrupted_run, average_from=9)

    with pytest.raises(CheckpointError, match="exists; export into a new folder"):
        export_checkpoint(checkpoint, half)
    with pytest.raises(CheckpointError, match="a training checkpoint's name"):
        export_checkpoint(checkpoint, tmp_path / "checkpoint-99")
    with pytest.raises(ValueError, match="generator_dtype must be one of torch.float32, torch.float16"):
        export_checkpoint(checkpoint, tmp_path / "bf16", generator_dtype=torch.bfloat16)
    for name, damage, message in (
        ("truncated", lambda c: (c / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:1000]),
         "model.safetensors: missing or unreadable.*cannot be exported"),
        ("nan", lambda c: save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in trained.items()},
                                    str(c / "model.safetensors")), "model.safetensors: tensor .* holds NaN or infinite values"),
        ("discriminator", lambda c: shutil.copy(c / "model_1.safetensors", c / "model.safetensors"), "does not fit its recorded model: it lacks .* and .* more; has the unknown"),
        ("config", lambda c: (c / "training_state.json").write_text(json.dumps({**state, "model_config": {**state["model_config"], "ngf": "8"}})),
         "a model_config that builds no generator"),
        ("wider", lambda c: (c / "training_state.json").write_text(json.dumps({**state, "model_config": {**state["model_config"], "ngf": 16}})),
         r"does not fit its recorded model: it has another shape for \S+ and \d+ more$"),
    ):
        damaged = tmp_path / name / "checkpoint-9"
        shutil.copytree(checkpoint, damaged)
        damage(damaged)
        with pytest.raises(CheckpointError, match=message):
            export_checkpoint(damaged, tmp_path / name / "out", text_encoder_path=uninterrupted_run)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["checkpoint-9"], name  # nothing written, no partial left

    # A folder that appears at the output while exporting is never replaced (os.rename would replace an empty one).
    from t2i.training.checkpoints import publish_new_folder

    partial, final = tmp_path / ".race.partial", tmp_path / "race"
    partial.mkdir()
    final.mkdir()
    (final / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="appeared while exporting"):
        publish_new_folder(partial, final)
    assert (final / "notes.txt").read_text() == "mine" and partial.is_dir()

    # The command: one line for what it wrote, one-line refusals (a run folder names its latest checkpoint).
    command = [sys.executable, "-m", "t2i.training", "export"]
    done = subprocess.run([*command, str(last), str(tmp_path / "cli"), "--generator_dtype", "float16", "--average_from", "6"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (f"the mean generator of 3 checkpoints (checkpoint-6, checkpoint-9, checkpoint-{STEPS}) in float16; its check images "
            "differ from the float32 weights' by at most") in done.stdout
    # Its model card: the run's facts and command, this checkpoint's step, the export command, no score of the run's
    # own generator; and a summary that the evaluation's --update_model_card re-renders the card from.
    card = (tmp_path / "cli" / "README.md").read_text()
    summary = json.loads((tmp_path / "cli" / "training_summary.json").read_text())
    run_summary = json.loads((uninterrupted_run / "training_summary.json").read_text())
    assert summary["exported_from"] == ["checkpoint-6", "checkpoint-9", f"checkpoint-{STEPS}"] and summary["generator_dtype"] == "float16"
    assert summary["training_steps"] == STEPS and f"| steps | {STEPS} |" in card and "not on Oxford-102" in card
    assert run_summary["training_command"] in card
    assert f"# exported: python -m t2i.training export {last} {tmp_path / 'cli'} --text_encoder_path {uninterrupted_run} --generator_dtype float16 --average_from 6" in card
    assert set(summary["metrics"]) == {k for k in run_summary["metrics"] if k.startswith("text_encoder_")}
    from t2i.evaluation.report import add_to_model_card

    add_to_model_card(tmp_path / "cli", {"text_image_agreement_mean": 0.5})
    assert "| text_image_agreement_mean | 0.5 |" in (tmp_path / "cli" / "README.md").read_text()
    unfinished_card = (tmp_path / "given_encoder" / "README.md").read_text()  # its run saved no summary
    assert "# the training command was not recorded" in unfinished_card and "| steps | 9 |" in unfinished_card
    assert "trained with GAN-CLS" in unfinished_card  # GAN-INT's terms are not recorded in a checkpoint
    earlier = (tmp_path / "float32" / "README.md").read_text()  # checkpoint-9 of a run that ended at STEPS
    assert f"# (the run's command as it ended, at step {STEPS}; this checkpoint is step 9" in earlier
    add_to_model_card(tmp_path / "given_encoder", {"text_image_agreement_mean": 0.5})  # re-rendered from what the checkpoint records
    assert "| resolution | 64 |" in (tmp_path / "given_encoder" / "README.md").read_text()
    # A run summary with fields of the wrong types costs the card the run's facts, not the export.
    (tmp_path / "unfinished" / "training_summary.json").write_text(json.dumps({"metrics": [1, 2], "widget_prompts": 5, "training_command": "x"}))
    damaged_summary, _ = export_checkpoint(unfinished, tmp_path / "damaged_summary", text_encoder_path=tiny_text_encoder)
    assert "# the training command was not recorded" in (damaged_summary / "README.md").read_text()
    assert "Loading weights" not in done.stderr  # no progress bars around the one line
    from t2i.training.__main__ import main as training_command

    capsys.readouterr()  # the progress bars of the exports above
    for argv, code, message in (([str(uninterrupted_run), str(tmp_path / "cli2")], 2, f"its latest checkpoint is {list_checkpoints(uninterrupted_run)[-1]}"),
                                ([str(last), str(tmp_path / "cli")], 1, "exists; export into a new folder"),
                                ([str(last), str(tmp_path / "cli3"), "--average_from", str(STEPS)], 1, "average_from must be a step before"),
                                ([str(tmp_path / "nowhere"), str(tmp_path / "cli4")], 2, "nowhere does not exist: pass a checkpoint-N folder"),
                                ([str(last), str(tmp_path / "cli5"), "--average_from", "-5"], 2,
                                 "argument --average_from: must be a training step (a whole number ≥ 0), got -5"),
                                ([str(last), str(tmp_path / "cli6"), "--text_encoder_path", str(checkpoint)], 1,
                                 f"error: text_encoder_path {checkpoint}: {checkpoint} holds no text encoder: pass a saved pipeline"),
                                ([str(last), str(tmp_path / "cli7"), "--text_encoder_path", str(tmp_path / "nowhere")], 1,
                                 f"error: text_encoder_path {tmp_path / 'nowhere'}: "),
                                ([str(last), str(last / "training_state.json" / "out")], 1,
                                 f"error: cannot write {last / 'training_state.json' / 'out'}: cannot make the folder"),
                                # Nobody may create a folder in /proc: the error names the output, not a hidden temporary.
                                ([str(last), "/proc/t2i-export"], 1, "error: cannot write /proc/t2i-export: No such file or directory in /proc")):
        with pytest.raises(SystemExit) as exited:
            training_command(["export", *argv])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == code and message in error.splitlines()[-1], error
        assert len(error.splitlines()) == 1 if code == 1 else error.startswith("usage: python -m t2i.training export"), error


def same_weights(a: Path, b: Path) -> bool:
    """Two model folders hold the same tensors (saving again may order a safetensors file differently)."""
    def tensors(folder):
        return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}

    first, second = tensors(a), tensors(b)
    return bool(first) and first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow  # three tiny runs (30 s); the default run keeps fine-tuning's refusal and its plain path below
def test_fine_tuning_grows_a_trained_pipeline_and_scores_it_before_the_first_step(train_args, uninterrupted_run, tmp_path):
    import re

    # Residual blocks grow the text-affine generator (t2i-v5's; the default recipe's is Reed's): a tiny one first.
    affine_args = [*(a for a in train_args if a != "--use_ema"), "--recipe", "t2i-v5"]
    trained = tmp_path / "affine"
    run([*affine_args, "--max_train_steps", "2", "--checkpointing_steps", "2"], trained)
    # Two D-only warm-up steps: G is never updated, so the run ends with the generator it started from.
    args = [*affine_args, "--pretrained_model_name_or_path", str(trained), "--residual_blocks",
            "--max_train_steps", "2", "--evaluation_steps", "2", "--evaluation_samples", "40", "--discriminator_warmup_steps", "2"]
    result = run(args, tmp_path / "logged")
    log = result.stdout + result.stderr
    assert f"generator initialised from {trained} (grown: residual blocks added)" in log
    assert sorted(int(step) for step in re.findall(r"step (\d+): text_image_agreement_mean", log)) == [0, 2]
    source = load_file(trained / "generator" / "diffusion_pytorch_model.safetensors")
    tuned = load_file(tmp_path / "logged" / "generator" / "diffusion_pytorch_model.safetensors")
    assert GanClsPipeline.from_pretrained(tmp_path / "logged").generator.config.residual_blocks is True
    # The affine run's checkpoint grows too: its residual parameters sit inside the blocks, so G's Adam state
    # follows the parameters by name, and the grown run resumes.
    from t2i.training import grow_checkpoint
    from t2i.training.checkpoints import optimizer_state_from_safetensors

    grown = grow_checkpoint(trained / "checkpoint-2", tmp_path / "grown", "residual_blocks")
    before, after = load_file(trained / "checkpoint-2" / "model.safetensors"), load_file(grown / "model.safetensors")
    assert_identical({k: after[k] for k in before}, before)
    with safe_open(str(grown / "optimizer.safetensors"), "pt") as f:
        moments = optimizer_state_from_safetensors({k: f.get_tensor(k) for k in f.keys()}, f.metadata())
    names = [n for n, _ in GanClsPipeline.from_pretrained(tmp_path / "logged").generator.named_parameters()]
    with safe_open(str(trained / "checkpoint-2" / "optimizer.safetensors"), "pt") as f:
        old_moments = optimizer_state_from_safetensors({k: f.get_tensor(k) for k in f.keys()}, f.metadata())
    old_names = [n for n in names if n in before]
    for old_index, name in enumerate(old_names):
        assert torch.equal(moments["state"][names.index(name)]["exp_avg"], old_moments["state"][old_index]["exp_avg"]), name
    assert all(names[i].startswith("up_blocks.") and names[i] not in before for i in set(range(len(names))) - set(moments["state"]))
    run([*affine_args, "--max_train_steps", "3", "--residual_blocks", "--resume_from_checkpoint", "latest"], tmp_path / "grown")
    weights = [k for k in source if "running" not in k and "num_batches" not in k]
    assert weights and all(torch.equal(tuned[k], source[k]) for k in weights)
    assert {k for k in tuned if k not in source} == {f"up_blocks.{i}.{name}" for i in range(4) for name in (
        "conv2.weight", "norm2.running_mean", "norm2.running_var", "norm2.num_batches_tracked", "affine2.weight", "affine2.bias",
        "residual_gain")}


def test_fine_tuning_refuses_another_generator_before_any_work(train_args, uninterrupted_run, tmp_path):
    refused = run([*train_args, "--pretrained_model_name_or_path", str(uninterrupted_run), "--ngf", "16"], tmp_path / "other", check=False)
    assert refused.returncode != 0 and "they differ in ngf: 8 (here 16)" in refused.stderr
    assert "text embeddings" not in refused.stderr  # before any data is loaded or embedded


def test_discriminator_learning_rate_is_ds_own(train_args, uninterrupted_run, tmp_path):
    args = [*(a for a in train_args if a != "--use_ema"), "--pretrained_model_name_or_path", str(uninterrupted_run),
            "--max_train_steps", "2", "--checkpointing_steps", "2", "--learning_rate", "1e-12"]
    run(args, tmp_path / "same")
    run([*args, "--discriminator_learning_rate", "1e-3"], tmp_path / "own")
    weights = lambda state: {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}  # noqa: E731
    source = weights(load_file(uninterrupted_run / "generator" / "diffusion_pytorch_model.safetensors"))
    for folder in ("same", "own"):  # G at 1e-12 stays where it started either way
        tuned = weights(load_file(list_checkpoints(tmp_path / folder)[-1] / "model.safetensors"))
        assert all(torch.allclose(tuned[k], source[k], atol=1e-8) for k in source)
    same, own = (weights(load_file(list_checkpoints(tmp_path / f)[-1] / "model_1.safetensors")) for f in ("same", "own"))
    moved = sum((own[k] - same[k]).abs().max().item() > 1e-4 for k in same)
    assert moved >= len(same) // 2  # D at 1e-3 moved, from the same fresh start


@pytest.mark.slow  # a joint embedding and two tiny runs (50 s)
def test_discriminator_starts_from_the_joint_embeddings_image_encoder(tiny_synthetic_dataset, tiny_text_encoder, tmp_path):
    from t2i.text_pretraining.joint_embedding import JointImageEncoder

    # A text-encoder folder with a θ of a tiny D's layout (ndf 8 at 64 px: 8, 16, 32, 64).
    folder = tmp_path / "text_encoder"
    build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG).save_pretrained(folder)
    torch.manual_seed(0)
    theta = JointImageEncoder(TINY_TEXT_ENCODER_CONFIG["embed_dim"], (8, 16, 32, 64))
    theta.save_pretrained(folder / JOINT_IMAGE_ENCODER_FOLDER)
    args = ["--dataset_name", str(tiny_synthetic_dataset), "--text_encoder_path", str(folder), "--cache_dir", str(tmp_path / "cache"),
            "--ngf", "8", "--ndf", "8", "--train_batch_size", "16", "--max_train_steps", "1", "--checkpointing_steps", "1",
            "--report_to", "none", "--discriminator_from_joint_embedding", "--learning_rate", "1e-12"]
    result = run(args, tmp_path / "out")
    assert "discriminator image path initialised from the joint embedding's image encoder θ" in result.stdout
    discriminator = load_file(list_checkpoints(tmp_path / "out")[-1] / "model_1.safetensors")
    convolutions = [k for k in theta.features.state_dict() if k.endswith("weight") and theta.features.state_dict()[k].ndim == 4]
    assert len(convolutions) == 4 and "0.bias" in theta.features.state_dict()
    for name, tensor in theta.features.state_dict().items():
        if "running" not in name and "num_batches" not in name:  # one step at lr 1e-12 moves nothing visible
            assert torch.allclose(discriminator[f"image_encoder.{name}"], tensor, atol=1e-6), name
    # A D of another width is refused before any work, with the width to use.
    refused = run([*args, "--ndf", "16"], tmp_path / "wide", check=False)
    assert refused.returncode == 2 and "has widths [8, 16, 32, 64]" in refused.stderr and "use --ndf 8" in refused.stderr
    bare = run([*args[:2], "--text_encoder_path", str(tiny_text_encoder), *args[4:]], tmp_path / "bare", check=False)
    assert bare.returncode == 2 and "--discriminator_from_joint_embedding needs a joint embedding's image encoder" in bare.stderr
    # FreezeD: θ's first two blocks stay exactly θ (running statistics too) while the blocks above train.
    frozen = run([*args, "--freeze_discriminator_blocks", "2", "--learning_rate", "1e-3", "--max_train_steps", "2"], tmp_path / "frozen")
    discriminator = load_file(list_checkpoints(tmp_path / "frozen")[-1] / "model_1.safetensors")
    for name, tensor in theta.features.state_dict().items():
        assert torch.equal(discriminator[f"image_encoder.{name}"], tensor) == (int(name.split(".")[0]) < 5), name
    assert frozen.returncode == 0
    for flags, message in ((["--freeze_discriminator_blocks", "5"], "must be in [0, 4]"),
                           (["--no-discriminator_from_joint_embedding", "--freeze_discriminator_blocks", "1"], "it needs --discriminator_from_joint_embedding")):
        refused = run([*args, *flags], tmp_path / "refused", check=False)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr


def test_max_train_minutes_stops_at_a_saved_step(train_args, tmp_path):
    result = run([*train_args, "--max_train_steps", "100000", "--max_train_minutes", "0.001"], tmp_path)
    steps = json.loads((tmp_path / "training_summary.json").read_text())["training_steps"]
    assert 1 <= steps < 100 and (tmp_path / f"checkpoint-{steps}").is_dir()
    assert "generator weights identical on all 1 rank(s): True" in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# Resume across launches that differ, and kills around the text-encoder phase (Hardening, items 3 and 4)


def _launch(num_processes: int, args: list[str], output_dir: Path) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).parent / "accelerate"
    layout = ["--multi_gpu", "--num_processes", str(num_processes)] if num_processes > 1 else ["--num_processes", "1"]
    command = [str(accelerate), "launch", *layout, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), SCRIPT, *args, "--output_dir", str(output_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "ACCELERATE_USE_CPU": "1"})


@pytest.mark.slow  # two launches each way (20 s); the default run keeps a two-process run (test_two_process_cpu_run_keeps_ranks_identical)
@pytest.mark.parametrize("first, second", [(1, 2), (2, 1)])
def test_resuming_with_another_process_count_is_refused_before_any_work(first, second, train_args, tmp_path):
    args = [*train_args, "--max_train_steps", "3"]
    assert _launch(first, args, tmp_path).returncode == 0
    state = json.loads((list_checkpoints(tmp_path)[-1] / "training_state.json").read_text())
    assert state["num_processes"] == first and state["per_process_batch_size"] == 16
    resumed = _launch(second, [*train_args, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"], tmp_path)
    assert resumed.returncode != 0
    assert f"written by {first} process(es)" in resumed.stderr and f"accelerate launch --num_processes {first}" in resumed.stderr
    assert "steps/epoch" not in resumed.stdout  # refused before the data was loaded, on every rank, without a hang
    assert "Connection closed" not in resumed.stderr
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3"]  # nothing lost


@pytest.mark.slow
def test_a_missing_per_process_file_is_named(train_args, tmp_path):
    assert _launch(1, [*train_args, "--max_train_steps", "3"], tmp_path).returncode == 0
    rng_file = list_checkpoints(tmp_path)[-1] / "t2i_rng_0.safetensors"
    rng_file.rename(rng_file.with_name("t2i_rng_7.safetensors"))  # still one file: the process count looks right
    resumed = run([*train_args, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"], tmp_path, check=False)
    assert resumed.returncode != 0 and f"{rng_file}: this process's random-state file is missing" in resumed.stderr


@pytest.fixture(scope="module")
def char_cnn_rnn_args(tiny_synthetic_dataset, tmp_path_factory) -> list[str]:
    cache = tmp_path_factory.mktemp("char_cnn_rnn_cache")
    return [
        "--dataset_name", str(tiny_synthetic_dataset), "--text_encoder", "char-cnn-rnn", "--text_encoder_steps", "30",
        "--char_cnn_rnn_config", json.dumps(TINY_TEXT_ENCODER_CONFIG), "--text_encoder_batch_size", "8", "--cache_dir", str(cache),
        "--ngf", "8", "--ndf", "8", "--train_batch_size", "16", "--max_train_steps", "6", "--checkpointing_steps", "3",
        "--report_to", "none", "--seed", "5",
    ]


@pytest.mark.slow
def test_kills_inside_and_right_after_the_text_encoder_phase_change_nothing(char_cnn_rnn_args, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run(char_cnn_rnn_args, uninterrupted)
    resumed = tmp_path / "resumed"
    log = tmp_path / "stderr.log"
    training_text_encoder = lambda: "joint embedding" in log.read_text() if log.exists() else False  # noqa: E731  (its tqdm bar)
    text_encoder_saved = lambda: (resumed / "char_cnn_rnn" / "joint_embedding_metrics.json").is_file()  # noqa: E731
    for ready in (training_text_encoder, text_encoder_saved):  # inside the phase, then right after it (no GAN checkpoint yet)
        with open(log, "w") as stderr:
            process = subprocess.Popen([sys.executable, SCRIPT, *char_cnn_rnn_args, "--resume_from_checkpoint", "latest",
                                        "--output_dir", str(resumed)], stdout=subprocess.DEVNULL, stderr=stderr)
            assert _kill_when(process, ready, 0.0)
    assert text_encoder_saved() and not list_checkpoints(resumed)
    run([*char_cnn_rnn_args, "--resume_from_checkpoint", "latest"], resumed)
    for name in ("generator/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "checkpoint-6/model_1.safetensors"):
        assert_identical(load_file(resumed / name), load_file(uninterrupted / name))


def test_resuming_with_another_model_is_refused_before_any_work(train_args, tmp_path):
    run([*train_args, "--max_train_steps", "3"], tmp_path)
    resumed = run([*train_args, "--max_train_steps", "6", "--ngf", "16", "--resume_from_checkpoint", "latest"], tmp_path, check=False)
    assert resumed.returncode != 0 and "holds another model: ngf 8 (now 16)" in resumed.stderr
    assert "steps/epoch" not in resumed.stdout


def test_counterfactual_negatives_refuse_captions_with_nothing_to_swap(train_args, tiny_synthetic_dataset, tmp_path):
    """Captions that state no colour, count or shape have no counterfactual: the flag would silently do nothing."""
    plain = tmp_path / "plain"
    for split in ("train", "test"):
        rows = datasets.load_dataset(str(tiny_synthetic_dataset), split=split)
        rows.map(lambda row: {"captions": ["a flower", "a pretty bloom"]}).to_parquet(str(plain / "data" / f"{split}-00000-of-00001.parquet"))
    args = [*train_args, "--dataset_name", str(plain), "--counterfactual_negatives", "0.5", "--max_train_steps", "1"]
    result = run(args, tmp_path / "out", check=False)
    assert result.returncode != 0
    assert "none of the 322 training captions states a colour, count or shape word" in result.stderr.replace("\n", " ")


@pytest.mark.parametrize("flags, culprit", [
    (["--learning_rate", "1e30", "--discriminator_learning_rate", "1e30"], "is not finite"),
    (["--discriminator_learning_rate", "1e30"], "loss_g = nan"),
    # Losses and weights stay finite, but Adam's second moment is inf, so its update m/sqrt(v) is 0: a dead run.
    (["--contrastive_weight", "1e30", "--checkpointing_steps", "1"], "optimizer exp_avg_sq of"),
    # The same at a step that only the time limit makes the last one: it is checked before it is saved.
    (["--contrastive_weight", "1e30", "--checkpointing_steps", "1000", "--max_train_minutes", "0.0001"], "optimizer exp_avg_sq of"),
])
def test_a_run_that_diverges_stops_with_a_named_error_and_keeps_its_finite_checkpoints(flags, culprit, train_args, tmp_path):
    result = run([*train_args, *flags], tmp_path, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "diverged at step" in result.stderr and culprit in result.stderr, result.stderr[-2000:]
    assert "--reseed_on_resume" in result.stderr  # resuming restores the learning rates, so that is the retry offered
    assert "Traceback" not in result.stderr
    for checkpoint in list_checkpoints(tmp_path):  # what was saved is finite: a NaN state never replaces a good one
        for name in ("model.safetensors", "model_1.safetensors", "optimizer.safetensors", "optimizer_1.safetensors"):
            assert all(t.isfinite().all() for t in load_file(checkpoint / name).values() if t.is_floating_point()), f"{checkpoint.name}/{name}"
    assert not (tmp_path / "generator").exists()  # no pipeline of NaN weights


def test_a_two_process_run_that_diverges_stops_on_both_ranks(train_args, tmp_path):
    # Each rank checks its own losses; they agree through one all-reduce, so neither is left waiting in the next one.
    result = _launch(2, [*train_args, "--learning_rate", "1e30", "--discriminator_learning_rate", "1e30"], tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("training diverged at step 1:") == 2, result.stderr[-3000:]
    assert not list_checkpoints(tmp_path) and not (tmp_path / "generator").exists()
