"""Checkpoint files hold optimizer and random states as safetensors and JSON: round trips on real optimizers, and
every damaged file refused by name."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from t2i.hub import CheckpointError
from t2i.training.checkpoints import (check_resumable, global_rng_state, load_checkpoint, optimizer_state_from_safetensors,
                                     optimizer_state_to_safetensors, save_checkpoint, set_global_rng_state)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    data = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(4, 3, generator=data)).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.5, 0.999)),
                                  lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)], ids=["adam", "sgd-momentum"])
def test_an_optimizer_restored_from_safetensors_continues_exactly(make, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 1))
    optimizer = make(model.parameters())
    _train(model, optimizer, steps=3, seed=1)

    tensors, metadata = optimizer_state_to_safetensors(optimizer.state_dict())
    save_file(tensors, str(tmp_path / "optimizer.safetensors"), metadata=metadata)
    with safe_open(str(tmp_path / "optimizer.safetensors"), "pt") as f:
        restored_state = optimizer_state_from_safetensors({k: f.get_tensor(k) for k in f.keys()}, f.metadata())
    twin = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 1))
    twin.load_state_dict(model.state_dict())
    restored = make(twin.parameters())
    restored.load_state_dict(restored_state)
    assert restored.param_groups[0]["lr"] == 1e-2 and len(restored.state) == len(optimizer.state) > 0

    _train(model, optimizer, steps=2, seed=2)
    _train(twin, restored, steps=2, seed=2)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_optimizer_state_json_cannot_hold_is_refused():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], lr=torch.tensor(1e-3))
    with pytest.raises(TypeError, match="JSON"):
        optimizer_state_to_safetensors(optimizer.state_dict())


def test_global_random_streams_restore_exactly(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy state, which must come back too
    tensors, metadata = global_rng_state()
    save_file(tensors, str(tmp_path / "rng.safetensors"), metadata=metadata)
    draws = lambda: (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])  # noqa: E731
    expected = draws()

    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    with safe_open(str(tmp_path / "rng.safetensors"), "pt") as f:
        set_global_rng_state(load_file(str(tmp_path / "rng.safetensors")), f.metadata())
    again = draws()
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


# ---------------------------------------------------------------------------------------------------------------
# save_checkpoint / check_resumable / load_checkpoint on a real Accelerator with small models: every damaged file
# is refused by name before a run would load its data.

@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _models_and_optimizers(accelerator, width: int = 4):
    torch.manual_seed(0)
    models = [torch.nn.Linear(3, width), torch.nn.Sequential(torch.nn.Linear(width, 2), torch.nn.BatchNorm1d(2))]
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    for model, optimizer in zip(models, optimizers):  # one step each, so Adam holds moments
        model(torch.randn(4, 3 if model is models[0] else width)).square().mean().backward()
        optimizer.step()
    return accelerator.prepare(*models, *optimizers)


def _save(accelerator, folder: Path, models, optimizers, ema: torch.nn.Module | None = None, model_config: dict | None = None) -> Path:
    state = {"global_step": 3, "epoch": 0, "step_in_epoch": 3, "num_processes": 1, "per_process_batch_size": 4,
             "model_config": model_config or {}, "use_ema": ema is not None}
    rng = {"loader_epoch_start": torch.Generator().get_state(), "noise": torch.Generator().manual_seed(1).get_state()}
    return save_checkpoint(accelerator, folder, state, rng, models, optimizers, ema)


def test_compiled_models_are_saved_and_loaded_under_their_plain_names(accelerator, tmp_path):
    g, d, opt_g, opt_d = _models_and_optimizers(accelerator)
    checkpoint = _save(accelerator, tmp_path, [torch.compile(g), torch.compile(d)], [opt_g, opt_d])
    assert sorted(load_file(str(checkpoint / "model.safetensors"))) == ["bias", "weight"]  # no _orig_mod. prefix
    plain_g, plain_d, plain_opt_g, plain_opt_d = _models_and_optimizers(accelerator)
    with torch.no_grad():
        plain_g.weight.zero_()
    check_resumable(checkpoint, 1, 4)
    load_checkpoint(accelerator, checkpoint, [plain_g, plain_d], [plain_opt_g, plain_opt_d])  # a resume without --torch_compile
    assert torch.equal(plain_g.weight, g.weight)
    load_checkpoint(accelerator, checkpoint, [torch.compile(plain_g), torch.compile(plain_d)], [plain_opt_g, plain_opt_d])  # and with it


def test_an_optimizer_state_of_other_shapes_is_refused_by_name(accelerator, tmp_path):
    g, d, opt_g, opt_d = _models_and_optimizers(accelerator, width=4)
    checkpoint = _save(accelerator, tmp_path, [g, d], [opt_g, opt_d])
    _, _, wide_opt_g, _ = _models_and_optimizers(accelerator, width=5)  # as many parameters, other shapes
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors does not fit this run: state exp_avg of parameter 0 has shape \(4, 3\)"):
        load_checkpoint(accelerator, checkpoint, [], [wide_opt_g])


def _damage(checkpoint: Path, case: str) -> None:
    rng = checkpoint / "t2i_rng_0.safetensors"
    if case == "training state deleted":
        (checkpoint / "training_state.json").unlink()
    elif case == "training state truncated":
        (checkpoint / "training_state.json").write_text('{"global_step": 3, "ep')
    elif case == "training state without epoch":
        (checkpoint / "training_state.json").write_text('{"global_step": 3, "step_in_epoch": 3}')
    elif case == "optimizer without metadata":
        save_file(load_file(str(checkpoint / "optimizer.safetensors")), str(checkpoint / "optimizer.safetensors"))
    elif case == "rng without noise":
        with safe_open(str(rng), "pt") as f:
            metadata = f.metadata()
        save_file({k: v for k, v in load_file(str(rng)).items() if k != "noise"}, str(rng), metadata=metadata)
    elif case == "rng without metadata":
        save_file(load_file(str(rng)), str(rng))
    elif case == "rng state of another size":
        with safe_open(str(rng), "pt") as f:
            metadata = f.metadata()
        save_file({**load_file(str(rng)), "global/torch": torch.zeros(7, dtype=torch.uint8)}, str(rng), metadata=metadata)
    elif case == "optimizer lost tensors":
        optimizer = checkpoint / "optimizer.safetensors"
        with safe_open(str(optimizer), "pt") as f:
            metadata = f.metadata()
        save_file({k: v for k, v in load_file(str(optimizer)).items() if not k.startswith("state/0/")}, str(optimizer), metadata=metadata)
    elif case == "training state step as text":
        (checkpoint / "training_state.json").write_text('{"global_step": "3", "epoch": 0, "step_in_epoch": 3}')
    elif case == "rng numpy state of another size":
        with safe_open(str(rng), "pt") as f:
            metadata = f.metadata()
        save_file({**load_file(str(rng)), "global/numpy_keys": torch.zeros(10, dtype=torch.int64)}, str(rng), metadata=metadata)
    elif case == "rng noise as floats":
        with safe_open(str(rng), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(rng))
        save_file({**tensors, "noise": tensors["noise"].float()}, str(rng), metadata=metadata)
    elif case == "ema deleted":
        (checkpoint / "ema_generator.safetensors").unlink()
    elif case == "ema truncated":
        (checkpoint / "ema_generator.safetensors").write_bytes(b"\x08\x00\x00")


DAMAGE = {  # case: the file named in the error and what it says
    "training state deleted": ("training_state.json", "missing or unreadable"),
    "training state truncated": ("training_state.json", "missing or unreadable"),
    "training state without epoch": ("training_state.json", "lacks epoch"),
    "optimizer without metadata": ("optimizer.safetensors", "lacks param_groups, scalars, tensors in its metadata"),
    "optimizer lost tensors": ("optimizer.safetensors", "lacks the tensors state/0/exp_avg, state/0/exp_avg_sq, state/0/step"),
    "training state step as text": ("training_state.json", r"lacks global_step \(as integers\)"),
    "rng numpy state of another size": ("t2i_rng_0.safetensors", "global/numpy_keys of shape"),
    "rng noise as floats": ("t2i_rng_0.safetensors", "noise of shape .* and dtype F32"),
    "ema deleted": ("ema_generator.safetensors", "missing or unreadable"),
    "rng without noise": ("t2i_rng_0.safetensors", "lacks noise"),
    "rng without metadata": ("t2i_rng_0.safetensors", "lacks numpy, python"),
    "rng state of another size": ("t2i_rng_0.safetensors", "global/torch of shape \\[7\\]"),
    "ema truncated": ("ema_generator.safetensors", "missing or unreadable"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_checkpoint_is_refused_naming_the_file(accelerator, tmp_path, case):
    g, d, opt_g, opt_d = _models_and_optimizers(accelerator)
    checkpoint = _save(accelerator, tmp_path, [g, d], [opt_g, opt_d], ema=torch.nn.Linear(3, 4))
    check_resumable(checkpoint, 1, 4, use_ema=True)
    _damage(checkpoint, case)
    name, message = DAMAGE[case]
    with pytest.raises(CheckpointError, match=rf"{name}.*{message}.*(resume from an earlier checkpoint|start a new run)"):
        check_resumable(checkpoint, 1, 4, use_ema=True)


def test_ema_must_match_the_launch_and_a_run_folder_is_pointed_to_its_checkpoints(accelerator, tmp_path):
    g, d, opt_g, opt_d = _models_and_optimizers(accelerator)
    with_ema = _save(accelerator, tmp_path / "ema", [g, d], [opt_g, opt_d], ema=torch.nn.Linear(3, 4))
    without = _save(accelerator, tmp_path / "plain", [g, d], [opt_g, opt_d])
    with pytest.raises(CheckpointError, match="written with --use_ema: resume with it"):
        check_resumable(with_ema, 1, 4, use_ema=False)  # else the run would end with the raw G
    with pytest.raises(CheckpointError, match="written without --use_ema: resume without it"):
        check_resumable(without, 1, 4, use_ema=True)
    with pytest.raises(CheckpointError, match=rf"is a run folder, not a checkpoint.*the latest is {tmp_path / 'plain' / 'checkpoint-3'}"):
        check_resumable(tmp_path / "plain", 1, 4)


def _make_legacy(accelerator, folder: Path, random_states: dict | None = None) -> Path:
    """A checkpoint as t2i wrote it through accelerate's save_state: optimizers and random states pickled."""
    from accelerate.checkpointing import save_accelerator_state

    g, d, opt_g, opt_d = _models_and_optimizers(accelerator)
    checkpoint = _save(accelerator, folder, [g, d], [opt_g, opt_d])
    save_accelerator_state(str(checkpoint), [], [opt_g, opt_d], [], [], process_index=0, step=0)
    for name in ("optimizer.safetensors", "optimizer_1.safetensors"):
        (checkpoint / name).unlink()
    rng = checkpoint / "t2i_rng_0.safetensors"
    save_file({k: v for k, v in load_file(str(rng)).items() if not k.startswith("global/")}, str(rng))
    if random_states is not None:
        torch.save(random_states, checkpoint / "random_states_0.pkl")
    return checkpoint


def test_convert_goes_on_past_a_bad_checkpoint_and_changes_nothing_in_it(accelerator, tmp_path, capsys):
    from t2i.training.__main__ import main

    good = [_make_legacy(accelerator, tmp_path / name) for name in ("a", "c")]
    bad = _make_legacy(accelerator, tmp_path / "b", random_states={"foo": torch.zeros(1)})  # plain data, not accelerate's layout
    before = {p.name: p.read_bytes() for p in bad.iterdir()}
    with pytest.raises(SystemExit) as exit:
        main(["convert", str(good[0]), str(bad), str(good[1])])
    out, err = capsys.readouterr()
    assert exit.value.code == 1 and f"not converted: {bad}" in err and "not the accelerate checkpoint layout" in err
    assert {p.name: p.read_bytes() for p in bad.iterdir()} == before
    for checkpoint in good:
        assert f"{checkpoint}: converted optimizer.bin, optimizer_1.bin, random_states_0.pkl" in out
        check_resumable(checkpoint, 1, 4)
        load_checkpoint(accelerator, checkpoint, _models_and_optimizers(accelerator)[:2], _models_and_optimizers(accelerator)[2:])


def test_a_model_flag_newer_than_the_checkpoint_resumes_only_while_off(accelerator, tmp_path):
    # A checkpoint written before --polar_harmonics existed records no such flag: it was off.
    g, d, opt_g, opt_d = _models_and_optimizers(accelerator)
    checkpoint = _save(accelerator, tmp_path, [g, d], [opt_g, opt_d], model_config={"fusion": "affine", "ngf": 32})
    check_resumable(checkpoint, 1, 4, {"fusion": "affine", "ngf": 32, "polar_harmonics": 0, "conditioning_augmentation": False})
    with pytest.raises(ValueError, match=r"holds another model: polar_harmonics None \(now 4\).*\(--polar_harmonics 0\)"):
        check_resumable(checkpoint, 1, 4, {"fusion": "affine", "ngf": 32, "polar_harmonics": 4})
    with pytest.raises(ValueError, match=r"\(--no-spectral_norm\)"):  # spelled as the command line takes it
        check_resumable(checkpoint, 1, 4, {"fusion": "affine", "ngf": 32, "spectral_norm": True})
    with pytest.raises(ValueError, match=r"holds another model: ngf 32 \(now 16\)"):
        check_resumable(checkpoint, 1, 4, {"fusion": "affine", "ngf": 16, "polar_harmonics": 0})


def test_a_changed_text_attention_names_the_flag_and_the_text_encoder_not_a_derived_value(accelerator, tmp_path):
    g, d, opt_g, opt_d = _models_and_optimizers(accelerator)
    trained = {"fusion": "input", "text_attention_heads": 4, "text_positions": 18}
    checkpoint = _save(accelerator, tmp_path, [g, d], [opt_g, opt_d], model_config=trained)
    with pytest.raises(ValueError, match=r"Resume with the flags it was trained with \(--text_attention_heads 4\) and the text encoder it was trained with,") as error:
        check_resumable(checkpoint, 1, 4, {**trained, "text_attention_heads": 0, "text_positions": 0})
    assert "--text_positions" not in str(error.value)  # no such flag: it follows from the text encoder
    with pytest.raises(ValueError, match=r"Resume with the text encoder it was trained with, or start"):
        check_resumable(checkpoint, 1, 4, {**trained, "text_positions": 12})


def test_grow_refuses_what_it_cannot_grow_with_a_clear_error(tmp_path, capsys):
    from t2i.training.__main__ import main

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    for argv, message in [
        (["grow", str(checkpoint), str(tmp_path / "out")], "grow takes one option: --residual_blocks or --deep_fusion or --fusion_masks K or --output_palette K"),
        (["grow", str(checkpoint), str(tmp_path / "out"), "--deep_fusion", "--residual_blocks"], "grow takes one option"),
        (["grow", str(checkpoint), str(tmp_path / "out"), "--fusion_masks", "0"], "--fusion_masks: K must be a whole number from 2 to 16, got 0"),
        (["grow", str(checkpoint), str(tmp_path / "out"), "--output_palette", "1"], "--output_palette: K must be a whole number from 2 to 16, got 1"),
        (["grow", str(checkpoint), str(tmp_path / "out"), "--fusion_masks", "two"], "K must be a whole number from 2 to 16, got 'two'"),
        (["grow", str(checkpoint), str(tmp_path / "out"), "--deep_fusion"], "is not a training checkpoint (no training_state.json)"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code != 0 and message in capsys.readouterr().err
    (checkpoint / "training_state.json").write_text(json.dumps({"global_step": 4}))
    with pytest.raises(SystemExit) as exit_info:
        main(["grow", str(checkpoint), str(tmp_path / "out"), "--deep_fusion"])
    assert exit_info.value.code == 1 and "records no model_config" in capsys.readouterr().err
    (checkpoint / "training_state.json").write_text(json.dumps({"global_step": 4, "model_config": {"fusion": "affine", "residual_blocks": True}}))
    with pytest.raises(SystemExit):
        main(["grow", str(checkpoint), str(tmp_path / "out"), "--residual_blocks"])
    assert "already has residual_blocks" in capsys.readouterr().err
    (checkpoint / "optimizer.bin").write_bytes(b"\x80\x04")  # accelerate's pickle: never read, converted first
    with pytest.raises(SystemExit):
        main(["grow", str(checkpoint), str(tmp_path / "out"), "--deep_fusion"])
    assert f"python -m t2i.training convert {checkpoint}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the run folder instead of its checkpoint: the checkpoint is named
        main(["grow", str(tmp_path), str(tmp_path / "out"), "--deep_fusion"])
    assert f"its latest checkpoint is {checkpoint}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written by a refusal
