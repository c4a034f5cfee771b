"""Checkpoint files hold optimizer and random states as safetensors and JSON: round trips on real optimizers."""

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from t2i.training.checkpoints import global_rng_state, optimizer_state_from_safetensors, optimizer_state_to_safetensors, set_global_rng_state


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
