"""Training checkpoints in safetensors and JSON only, made visible atomically.

A checkpoint holds G and D (``model.safetensors``, ``model_1.safetensors``), their Adam states
(``optimizer.safetensors``, ``optimizer_1.safetensors``), the fp16 loss scale (``scaler.json``), every random
stream of every process (``t2i_rng_{rank}.safetensors``), the EMA generator and ``training_state.json``. Nothing in
it is a pickle: accelerate's ``save_state`` writes optimizers and random states with ``torch.save``, so t2i writes
them itself. Checkpoints from before this (with ``optimizer.bin``, ``random_states_*.pkl``) are refused unread and
converted once with ``python -m t2i.training convert CHECKPOINT``. ``python -m t2i.training grow`` copies a
checkpoint into one whose generator has an option that `GanClsGenerator.grow_from_` adds without changing what it
draws, so a trained run can continue with it, D and both optimizers included.

A checkpoint is written to ``.checkpoint-{step}.partial`` and renamed to ``checkpoint-{step}`` only when every
file is on disk, so `--resume_from_checkpoint latest` never picks up half a checkpoint, whatever moment a run is
killed at, and a full disk leaves the earlier checkpoints intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from t2i.hub import MODEL_CARD_TAGS, CheckpointError, ModelCardInfo, default_mode, render_model_card
from t2i.models import GROWABLE, GanClsGenerator, check_region_count

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
LEGACY_PICKLE = re.compile(r"^(optimizer(_\d+)?\.bin|random_states_\d+\.pkl|scaler\.pt)$")  # accelerate's save_state's names


def legacy_pickles(checkpoint: Path) -> list[Path]:
    """The pickles accelerate's ``save_state`` wrote into ``checkpoint`` (exact names: a user's backup is not one)."""
    return sorted(p for p in checkpoint.iterdir() if LEGACY_PICKLE.match(p.name)) if checkpoint.is_dir() else []


def _numbered(stem: str, index: int, suffix: str) -> str:
    return f"{stem}{'' if index == 0 else f'_{index}'}{suffix}"  # accelerate's names: model, model_1, ...


def optimizer_state_to_safetensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split ``optimizer.state_dict()`` into tensors (``state/{param}/{key}``) and JSON metadata (param groups,
    non-tensor state). Inverse: `optimizer_state_from_safetensors`.

    Raises:
        TypeError: a param-group value JSON cannot hold (e.g. a tensor learning rate).
    """
    tensors, scalars = {}, {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state/{index}/{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}/{key}"] = value
    try:
        metadata = {"param_groups": json.dumps(state_dict["param_groups"]), "scalars": json.dumps(scalars),
                    "tensors": json.dumps(sorted(tensors))}  # the manifest: a file that lost tensors is refused
    except TypeError as error:
        raise TypeError(f"optimizer state that safetensors metadata (JSON) cannot hold: {error}") from error
    return tensors, metadata


def optimizer_state_from_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """The ``optimizer.load_state_dict`` input that `optimizer_state_to_safetensors` split (betas come back as lists)."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in json.loads(metadata["scalars"]).items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": json.loads(metadata["param_groups"])}


def rng_state_to_safetensors(torch_state: torch.Tensor, cuda_states: Sequence[torch.Tensor], numpy_state: tuple,
                             python_state: tuple) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Global random streams (as ``torch.get_rng_state``, ``torch.cuda.get_rng_state_all``, ``np.random.get_state``
    and ``random.getstate`` return them) as tensors and JSON metadata; `set_global_rng_state` restores them."""
    kind, keys, position, has_gauss, cached_gaussian = numpy_state
    version, words, gauss_next = python_state
    tensors = {"global/torch": torch_state, **{f"global/cuda/{i}": s for i, s in enumerate(cuda_states)},
               "global/numpy_keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),  # uint32 words; safetensors' torch side lacks uint32
               "global/python_words": torch.tensor(words, dtype=torch.int64)}
    metadata = {"numpy": json.dumps([kind, int(position), int(has_gauss), float(cached_gaussian)]), "python": json.dumps([version, gauss_next])}
    return tensors, metadata


def global_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's global random streams (torch CPU and CUDA, NumPy, Python) as tensors and JSON metadata."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return rng_state_to_safetensors(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())


def set_global_rng_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Restore what `global_rng_state` recorded (CUDA streams only where this process has CUDA)."""
    torch.set_rng_state(tensors["global/torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("global/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, position, has_gauss, cached_gaussian = json.loads(metadata["numpy"])
    np.random.set_state((kind, tensors["global/numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, gauss_next = json.loads(metadata["python"])
    random.setstate((version, tuple(tensors["global/python_words"].tolist()), gauss_next))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (temporary folders of unfinished saves are ignored)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the folder itself."""
    # Data must be on disk before a rename publishes the folder, or a crash could expose empty files.
    for path in [*folder.rglob("*"), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_folder(partial: Path, final: Path) -> None:
    """Make a fully written folder visible under its final name in one rename (replacing an older one)."""
    fsync_tree(partial)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_tree(final.parent)


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    training_state: dict,
    rng_state: dict[str, torch.Tensor],
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    ema_generator: torch.nn.Module | None = None,
    checkpoints_total_limit: int | None = None,
) -> Path:
    """Write ``output_dir/checkpoint-{step}`` (step = ``training_state["global_step"]``) through a temporary folder.

    The main process writes ``models`` and ``optimizers`` (as prepared by accelerate; numbered in order: G, then D),
    the loss scale, the EMA generator and ``training_state`` (JSON); every process writes ``rng_state`` (its
    ``torch.Generator`` states) with its global random streams as ``t2i_rng_{rank}.safetensors``. Older
    checkpoints beyond ``checkpoints_total_limit`` are removed after the new one is complete.
    """
    step = training_state["global_step"]
    final = Path(output_dir) / f"checkpoint-{step}"
    partial = Path(output_dir) / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        if accelerator.is_main_process:
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        global_tensors, global_metadata = global_rng_state()
        save_file({**rng_state, **global_tensors}, str(partial / f"t2i_rng_{accelerator.process_index}.safetensors"), metadata=global_metadata)
        if accelerator.is_main_process:
            for i, model in enumerate(models):  # the plain module's names, compiled or not; channels-last is not contiguous
                state = {k: v.contiguous() for k, v in accelerator.unwrap_model(model, keep_torch_compile=False).state_dict().items()}
                save_file(state, str(partial / _numbered("model", i, ".safetensors")))
            for i, optimizer in enumerate(optimizers):
                tensors, metadata = optimizer_state_to_safetensors(optimizer.state_dict())
                save_file(tensors, str(partial / _numbered("optimizer", i, ".safetensors")), metadata=metadata)
            if accelerator.scaler is not None:
                (partial / "scaler.json").write_text(json.dumps(accelerator.scaler.state_dict()))
            if ema_generator is not None:
                save_file(ema_generator.state_dict(), str(partial / "ema_generator.safetensors"))
            (partial / "training_state.json").write_text(json.dumps(training_state))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            publish_folder(partial, final)
            if checkpoints_total_limit is not None:
                for old in list_checkpoints(output_dir)[:-checkpoints_total_limit]:
                    shutil.rmtree(old)
    except Exception:  # a full disk surfaces as OSError, RuntimeError or SafetensorError depending on the writer
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


RNG_KEYS = ("loader_epoch_start", "noise", "global/torch", "global/numpy_keys", "global/python_words")


def check_resumable(checkpoint: Path, num_processes: int, per_process_batch_size: int, model_config: dict | None = None,
                    use_ema: bool = False) -> None:
    """Refuse, before any work, a checkpoint this launch cannot continue exactly.

    A run's random streams are per process and its batches are global, so a checkpoint continues only with the
    process count and per-process batch size it was written with (``training_state.json`` records both; for older
    checkpoints the count is that of their ``t2i_rng_*.safetensors`` files), with the model it holds
    (``model_config``: the flags that shape G and D, also recorded; a flag a checkpoint does not record is newer
    than it, so it was off: 0, False or None), and with an EMA generator exactly when it has one (``use_ema``).
    Every file is opened and its keys and metadata checked; tensors are checked against the models in
    `load_checkpoint`. Every process runs this check on every file, and raises the same error, so none is left
    waiting for the others.

    Raises:
        CheckpointError: a run folder instead of a checkpoint; pickled optimizer or random states (a checkpoint from
            before t2i wrote them as safetensors: `python -m t2i.training convert` rewrites it); a missing,
            unreadable or incomplete file (named); EMA present or absent against ``use_ema``.
        ValueError: another process count, batch size or model, with what resumes the run.
        FileNotFoundError: a process's random-state file is missing (named).
    """
    if not (checkpoint / "training_state.json").exists() and list_checkpoints(checkpoint):
        raise CheckpointError(f"{checkpoint} is a run folder, not a checkpoint: pass one of its checkpoints "
                              f"(the latest is {list_checkpoints(checkpoint)[-1]}), or --output_dir {checkpoint} --resume_from_checkpoint latest")
    legacy = [p.name for p in legacy_pickles(checkpoint)]
    if legacy:
        raise CheckpointError(
            f"{checkpoint} holds pickled training state ({', '.join(legacy)}), as accelerate's save_state wrote it before "
            "t2i saved checkpoints as safetensors only. t2i never unpickles on resume. Convert it once, in place (it reads the "
            f"pickles with torch's weights-only loader, which refuses code): python -m t2i.training convert {checkpoint}"
        )
    earlier = "resume from an earlier checkpoint (--resume_from_checkpoint PATH) or start a new run in another --output_dir"
    try:
        state = json.loads((checkpoint / "training_state.json").read_text())
        missing = [k for k in ("global_step", "epoch", "step_in_epoch") if not isinstance(state.get(k), int)]
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{checkpoint / 'training_state.json'}: missing or unreadable ({error}); {earlier}") from error
    if missing:
        raise CheckpointError(f"{checkpoint / 'training_state.json'} lacks {', '.join(missing)} (as integers); {earlier}")
    saved_processes = state.get("num_processes", len(list(checkpoint.glob("t2i_rng_*.safetensors"))))
    saved_batch = state.get("per_process_batch_size")
    if saved_processes != num_processes or (saved_batch is not None and saved_batch != per_process_batch_size):
        raise ValueError(
            f"{checkpoint} was written by {saved_processes} process(es) with --train_batch_size {saved_batch or '?'} each "
            f"(global batch {saved_processes * saved_batch if saved_batch else '?'}); this launch has {num_processes} with "
            f"{per_process_batch_size}. Its random streams and step count belong to that layout: resume with "
            f"`accelerate launch --num_processes {saved_processes} ... --train_batch_size {saved_batch or per_process_batch_size}`, "
            "or start a new run in another --output_dir."
        )
    saved_model = state.get("model_config")
    changed = {}
    if saved_model is not None and model_config is not None:
        for k in saved_model.keys() | model_config.keys():
            saved, now = saved_model.get(k), model_config.get(k)
            if (saved != now) if k in saved_model else bool(now):
                changed[k] = (saved, now)
    if changed:
        def flag(name: str, value) -> str:  # as the command line spells it; a flag the checkpoint lacks was off
            if isinstance(value, bool) or (value is None and isinstance(model_config.get(name), bool)):
                return f"--{name}" if value else f"--no-{name}"
            return f"--{name} {0 if value is None else value}"

        # text_positions is no flag: it follows from the text encoder (with --text_attention_heads)
        flags = " ".join(flag(k, v) for k, (v, _) in sorted(changed.items()) if k != "text_positions")
        hint = " and ".join(([f"the flags it was trained with ({flags})"] if flags else [])
                            + (["the text encoder it was trained with"] if "text_positions" in changed else []))
        raise ValueError(f"{checkpoint} holds another model: {', '.join(f'{k} {a!r} (now {b!r})' for k, (a, b) in sorted(changed.items()))}. "
                         f"Resume with {hint}, or start a new run in another --output_dir.")
    for rank in range(num_processes):
        rng_file = checkpoint / f"t2i_rng_{rank}.safetensors"
        if not rng_file.is_file():
            raise FileNotFoundError(f"{rng_file}: this process's random-state file is missing, so {checkpoint} cannot be resumed exactly")
    has_ema = state.get("use_ema", (checkpoint / "ema_generator.safetensors").exists())  # recorded since the safetensors state
    if has_ema != use_ema:  # without it the run would end with the raw G, or have no EMA to continue
        raise CheckpointError(f"{checkpoint} was written {'with' if has_ema else 'without'} --use_ema: resume "
                              f"{'with' if has_ema else 'without'} it, or start a new run in another --output_dir")
    for name in ("model.safetensors", "model_1.safetensors", "optimizer.safetensors", "optimizer_1.safetensors",
                 *(["ema_generator.safetensors"] if use_ema else []), *(f"t2i_rng_{rank}.safetensors" for rank in range(num_processes))):
        try:
            with safe_open(str(checkpoint / name), "pt") as f:
                problems = _file_problems(name, f)
        except (OSError, SafetensorError) as error:
            raise CheckpointError(f"{checkpoint / name}: missing or unreadable ({error}), so {checkpoint} cannot be resumed; {earlier}") from error
        if problems:
            raise CheckpointError(f"{checkpoint / name}: {'; '.join(problems)}, so {checkpoint} cannot be resumed; {earlier}")


def _file_problems(name: str, f) -> list[str]:
    """What is wrong with an open checkpoint file's keys, metadata and random-state shapes (empty: nothing found)."""
    keys, metadata = set(f.keys()), f.metadata() or {}
    if name.startswith("optimizer"):
        absent = [k for k in ("param_groups", "scalars", "tensors") if k not in metadata]
        if absent:
            return [f"lacks {', '.join(absent)} in its metadata"]
        try:
            json.loads(metadata["param_groups"]), json.loads(metadata["scalars"])
            manifest = set(json.loads(metadata["tensors"]))
        except ValueError as error:
            return [f"metadata that is not JSON ({error})"]
        lost, extra = sorted(manifest - keys), sorted(keys - manifest)
        return [f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for what, names in
                (("lacks the tensors", lost), ("holds unlisted tensors", extra)) if names]
    if not name.startswith("t2i_rng_"):
        return []
    absent = [k for k in RNG_KEYS if k not in keys] + [k for k in ("numpy", "python") if k not in metadata]
    if absent:
        return [f"lacks {', '.join(absent)}"]
    torch_size = list(torch.get_rng_state().shape)
    expected = {"loader_epoch_start": (torch_size, "U8"), "noise": (torch_size, "U8"), "global/torch": (torch_size, "U8"),
                "global/numpy_keys": ([624], "I64"), "global/python_words": ([625], "I64")}  # MT19937's state
    found = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in expected}
    problems = [f"{k} of shape {found[k][0]} and dtype {found[k][1]}, not {shape} {dtype} (random states of this torch)"
                for k, (shape, dtype) in expected.items() if list(found[k][0]) != shape or found[k][1] != dtype]
    try:
        kind, position, has_gauss, cached = json.loads(metadata["numpy"])
        version, _ = json.loads(metadata["python"])
    except (ValueError, TypeError) as error:
        problems.append(f"numpy or python metadata that is not the recorded state ({error})")
    return problems


def _check_optimizer_state_fits(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """torch checks only the parameter counts per group; a moment of another shape would fail in the first step."""
    if len(state["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"{len(state['param_groups'])} parameter groups, the optimizer has {len(optimizer.param_groups)}")
    for saved, group in zip(state["param_groups"], optimizer.param_groups):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"a group of {len(saved['params'])} parameters, the optimizer's has {len(group['params'])}")
        for index, param in zip(saved["params"], group["params"]):
            for key, value in state["state"].get(index, {}).items():
                if torch.is_tensor(value) and value.ndim > 0 and value.shape != param.shape:
                    raise ValueError(f"state {key} of parameter {index} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}")


def load_checkpoint(
    accelerator,
    checkpoint: Path,
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    ema_generator: torch.nn.Module | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore models, optimizers, the loss scale and every random stream from a `save_checkpoint` folder; return the
    training state and this process's ``torch.Generator`` states. Run `check_resumable` first.

    Raises:
        CheckpointError: a file whose contents do not fit the models or optimizers (wrong or missing keys, shapes),
            named.
    """
    def read(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        with safe_open(str(checkpoint / name), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}

    def restore(name: str, load) -> None:
        try:
            load()
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            raise CheckpointError(f"{checkpoint / name} does not fit this run: {error}; resume from an earlier checkpoint "
                                  "or start a new run in another --output_dir") from error

    def restore_optimizer(optimizer, name: str) -> None:
        state = optimizer_state_from_safetensors(*read(name))
        _check_optimizer_state_fits(optimizer, state)
        optimizer.load_state_dict(state)

    for i, model in enumerate(models):  # compiled or not: checkpoints hold the plain module's names
        name = _numbered("model", i, ".safetensors")
        restore(name, lambda: accelerator.unwrap_model(model, keep_torch_compile=False).load_state_dict(read(name)[0]))
    for i, optimizer in enumerate(optimizers):
        name = _numbered("optimizer", i, ".safetensors")
        restore(name, lambda: restore_optimizer(optimizer, name))
    if accelerator.scaler is not None and (checkpoint / "scaler.json").is_file():
        restore("scaler.json", lambda: accelerator.scaler.load_state_dict(json.loads((checkpoint / "scaler.json").read_text())))
    training_state = json.loads((checkpoint / "training_state.json").read_text())
    rng_name = f"t2i_rng_{accelerator.process_index}.safetensors"
    tensors, metadata = read(rng_name)
    restore(rng_name, lambda: set_global_rng_state(tensors, metadata))
    if ema_generator is not None:
        restore("ema_generator.safetensors", lambda: ema_generator.load_state_dict(read("ema_generator.safetensors")[0]))
    return training_state, {k: v for k, v in tensors.items() if not k.startswith("global/")}


def convert_legacy_checkpoint(checkpoint: Path) -> list[str]:
    """Rewrite, in place, a checkpoint's pickled accelerate state (``optimizer*.bin``, ``random_states_{rank}.pkl``,
    ``scaler.pt``) as t2i's safetensors and JSON files, then delete those pickles; return their names (none for a
    checkpoint that holds no such pickles). Each ``t2i_rng_{rank}.safetensors`` gets that rank's global streams;
    other files are neither read nor changed.

    The pickles are read with torch's weights-only unpickler (tensors, containers and NumPy arrays only, never code).
    Every one of them is read and converted in memory before anything is written; each new file is written next to
    its final name and renamed into place, and the pickles are deleted last, so a conversion killed part-way can
    simply be run again.

    Raises:
        CheckpointError: a pickle the weights-only loader refuses, or one that is not accelerate's layout, or a
            missing ``t2i_rng_{rank}.safetensors`` (nothing is changed then).
    """
    from accelerate.utils import load  # torch.load with NumPy's array types allowed, as accelerate wrote them

    def safe_load(path: Path):
        try:
            return load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError (or RuntimeError) for anything but plain data
            raise CheckpointError(
                f"{path}: refused by torch's weights-only loader, so it holds more than tensors and may run code "
                f"({type(error).__name__}). Treat it as untrusted and do not load it otherwise: resume from another "
                "checkpoint or start a new run. Nothing was changed."
            ) from error

    def convert(path: Path, state) -> tuple[Path, dict[str, torch.Tensor] | str, dict[str, str] | None]:
        if path.suffix == ".bin":  # optimizer.bin, optimizer_1.bin
            return path.with_suffix(".safetensors"), *optimizer_state_to_safetensors(state)
        if path.suffix == ".pkl":  # random_states_{rank}.pkl: merged into that rank's t2i_rng file
            own_file = checkpoint / f"t2i_rng_{path.stem.rsplit('_', 1)[1]}.safetensors"
            own = {k: v for k, v in load_file(str(own_file)).items() if not k.startswith("global/")}
            tensors, metadata = rng_state_to_safetensors(state["torch_manual_seed"], state.get("torch_cuda_manual_seed", []),
                                                         state["numpy_random_seed"], state["random_state"])
            return own_file, {**own, **tensors}, metadata
        return checkpoint / "scaler.json", json.dumps(state), None  # scaler.pt

    pickles = legacy_pickles(checkpoint)
    outputs = []
    for path in pickles:
        state = safe_load(path)
        try:
            outputs.append(convert(path, state))
        except (KeyError, TypeError, ValueError, OSError, SafetensorError) as error:
            raise CheckpointError(f"{path}: not the accelerate checkpoint layout t2i wrote, or its t2i_rng file is missing "
                                  f"({type(error).__name__}: {error}); nothing was changed") from error
    for target, content, metadata in outputs:
        temporary = target.with_name(f".{target.name}.partial")
        if isinstance(content, str):
            temporary.write_text(content)
        else:
            save_file(content, str(temporary), metadata=metadata)
        os.replace(temporary, target)
    if pickles:
        fsync_tree(checkpoint)
    for path in pickles:  # last: until they are gone, check_resumable refuses the checkpoint and convert redoes it
        path.unlink()
    return [p.name for p in pickles]


def generator_config(flags: Mapping) -> dict:
    """GanClsGenerator's config from the model flags of a run (train_accelerate.py's, or a checkpoint's recorded
    ``model_config``), all but text_embed_dim (the text encoder's). A flag a record lacks was off."""
    def flag(name, default=False):
        return flags.get(name, default)

    return dict(
        noise_dim=flags["noise_dim"], text_proj_dim=flags["text_proj_dim"], ngf=flags["ngf"], resolution=flags["resolution"],
        # Conditioning augmentation replaces G's text projection (and its BatchNorm): it sets the code's scale itself.
        text_batch_norm=flag("text_batch_norm") and not flag("conditioning_augmentation"), fusion=flag("fusion", "input"),
        conditioning_augmentation=flag("conditioning_augmentation"), normalize_text=flag("normalize_text"),
        polar_harmonics=flag("polar_harmonics", 0), polar_antialias=flag("polar_antialias"), residual_blocks=flag("residual_blocks"),
        transposed_up_blocks=flag("transposed_up_blocks"), deep_fusion=flag("deep_fusion"),
        fusion_masks=flag("fusion_masks", 0), output_palette=flag("output_palette", 0),
        text_positions=flag("text_positions", 0), text_attention_heads=flag("text_attention_heads", 0),
    )


def _recorded_state(checkpoint: Path) -> dict:
    """``checkpoint``'s training_state.json, which must record the model flags (``model_config``) its generator was
    built from. Raises `CheckpointError` otherwise."""
    try:
        state = json.loads((checkpoint / "training_state.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{checkpoint / 'training_state.json'}: missing or not JSON ({error})") from error
    if not isinstance(state, dict) or not isinstance(state.get("model_config"), dict):
        raise CheckpointError(f"{checkpoint / 'training_state.json'} records no model_config, so its generator cannot be rebuilt")
    return state


def _read_state_file(checkpoint: Path, name: str, purpose: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of ``checkpoint/name``, after `_file_problems`; `CheckpointError` saying that the
    checkpoint cannot be ``purpose`` ("grown", "exported") otherwise."""
    try:
        with safe_open(str(checkpoint / name), "pt") as f:
            problems = _file_problems(name, f)
            if not problems:
                return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (OSError, SafetensorError) as error:
        problems = [f"missing or unreadable ({error})"]
    raise CheckpointError(f"{checkpoint / name}: {'; '.join(problems)}, so {checkpoint} cannot be {purpose}")


def _recorded_generator(checkpoint: Path, name: str, tensors: dict[str, torch.Tensor], flags: Mapping) -> GanClsGenerator:
    """The generator that the model flags ``flags`` describe, holding ``tensors`` (read from ``checkpoint/name``);
    its text width is read from the tensors. Raises `CheckpointError` if they do not fit."""
    text_weight = tensors.get("text_projection.0.weight", tensors.get("ca_net.to_moments.weight"))
    if text_weight is None or text_weight.ndim != 2:
        raise CheckpointError(f"{checkpoint / name} holds no generator text projection: it is not a t2i generator")
    attention = tensors.get("text_attention.scores.weight")  # [heads, D] over text_positions position states
    text_embed_dim = text_weight.shape[1] if attention is None else attention.shape[1] * flags.get("text_positions", 0)
    try:
        generator = GanClsGenerator(text_embed_dim=text_embed_dim, **generator_config(flags))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # e.g. "ngf": "8", or a flag it lacks
        raise CheckpointError(f"{checkpoint / 'training_state.json'}: a model_config that builds no generator ({error!r})") from error
    expected = generator.state_dict()
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    resized = sorted(k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape)
    if missing or unexpected or resized:  # one line: load_state_dict would list every tensor
        first = [f"{what} {names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''}"
                 for what, names in (("lacks", missing), ("has the unknown", unexpected), ("has another shape for", resized)) if names]
        raise CheckpointError(f"{checkpoint / name} does not fit its recorded model: it {'; '.join(first)}")
    generator.load_state_dict(tensors)
    return generator


def grow_checkpoint(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, option: str, value: bool | int = True) -> Path:
    """Copy ``checkpoint`` to ``output_dir/checkpoint-{step}`` with its generator grown by ``option`` (one of
    `t2i.models.GROWABLE`) set to ``value`` (True for a flag, the count for ``fusion_masks`` and ``output_palette``): the generator (and the EMA one) gains the option's zero-initialised parameters, G's Adam
    state is re-indexed by parameter name onto the grown generator, whose new parameters have no moments yet (Adam
    starts them as it starts every parameter), and the recorded model flags gain ``--{option}``; D, its optimizer,
    the random streams and the rest are copied as they are, and so is a text encoder the run trained itself
    (``RUN/char_cnn_rnn``), which a resume in ``output_dir`` would otherwise train again. Resumed there with the
    grown flags (``--output_dir OUTPUT_DIR --resume_from_checkpoint latest --{option}``), the run draws what it drew
    and goes on with the option trained (``--fusion_masks K`` for a count). Everything is checked before anything is written; the copy is written to a
    partial folder and renamed when complete, and a failure leaves no new folder behind.

    Raises:
        ValueError: ``option`` is not growable, ``value`` is not a positive value of its type, the checkpoint already
            has it or its generator cannot have it.
        CheckpointError: a file of the checkpoint that is missing, unreadable, pickled or does not fit the recorded
            model (named), or an output that already holds this checkpoint.
    """
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if option not in GROWABLE:
        raise ValueError(f"only {', '.join(GROWABLE)} can be grown into a trained generator, not {option!r}")
    if GROWABLE[option] is bool and value is not True:
        raise ValueError(f"{option} is grown to a flag (True), not {value!r}")
    if GROWABLE[option] is int:
        check_region_count(option, value, allow_off=False)
    if legacy_pickles(checkpoint):
        raise CheckpointError(f"{checkpoint} holds accelerate's pickles; rewrite it first with python -m t2i.training convert {checkpoint}")
    state = _recorded_state(checkpoint)
    flags = state["model_config"]
    if flags.get(option):
        raise ValueError(f"{checkpoint}'s generator already has {option}")
    final = output_dir / checkpoint.name
    if final.exists():
        raise CheckpointError(f"{final} exists; grow into another output directory")
    grown_flags = {**flags, option: value}
    generator_files = ["model.safetensors"] + (["ema_generator.safetensors"] if (checkpoint / "ema_generator.safetensors").is_file() else [])

    def read(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return _read_state_file(checkpoint, name, "grown")

    def grow(name: str, added_from: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], GanClsGenerator, GanClsGenerator]:
        tensors = read(name)[0]
        trained = _recorded_generator(checkpoint, name, tensors, flags)
        grown = GanClsGenerator(text_embed_dim=trained.config.text_embed_dim, **generator_config(grown_flags))
        grown.grow_from_(trained)
        grown_tensors = {k: v.contiguous() for k, v in grown.state_dict().items()}
        if added_from is not None:  # the EMA generator's new tensors are G's own fresh ones, not another random draw
            grown_tensors.update({k: added_from[k] for k in grown_tensors.keys() - tensors.keys()})
        return grown_tensors, trained, grown

    grown_generators = {"model.safetensors": grow("model.safetensors")}
    grown_generators.update({name: grow(name, grown_generators["model.safetensors"][0]) for name in generator_files[1:]})
    _, trained, grown = grown_generators["model.safetensors"]
    optimizer = optimizer_state_from_safetensors(*read("optimizer.safetensors"))
    names = [n for n, _ in trained.named_parameters()]
    grown_params = dict(grown.named_parameters())
    grown_index = {n: i for i, n in enumerate(grown_params)}
    saved = [i for group in optimizer["param_groups"] for i in group["params"]]
    if len(optimizer["param_groups"]) != 1 or len(saved) != len(names):
        raise CheckpointError(f"{checkpoint / 'optimizer.safetensors'} holds {len(optimizer['param_groups'])} parameter group(s) "
                              f"of {len(saved)} parameters; its generator has one of {len(names)}")
    moved = {}
    for position, index in enumerate(saved):  # Adam's state is keyed by position in the parameter list: follow the names
        entries = optimizer["state"].get(index, {})
        for key, value in entries.items():
            if torch.is_tensor(value) and value.ndim > 0 and value.shape != grown_params[names[position]].shape:
                raise CheckpointError(f"{checkpoint / 'optimizer.safetensors'}: state {key} of parameter {index} has shape "
                                      f"{tuple(value.shape)}, the generator's {names[position]} {tuple(grown_params[names[position]].shape)}")
        if entries:
            moved[grown_index[names[position]]] = entries
    optimizer = {"state": moved, "param_groups": [{**optimizer["param_groups"][0], "params": list(range(len(grown_params)))}]}

    created = not output_dir.exists()
    partial = final.with_name(f".{final.name}.partial")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for path in checkpoint.iterdir():
            if path.is_file() and path.name not in (*generator_files, "optimizer.safetensors", "training_state.json"):
                shutil.copy2(path, partial / path.name)
        for name, (tensors, _, _) in grown_generators.items():
            save_file(tensors, str(partial / name))
        optimizer_tensors, optimizer_metadata = optimizer_state_to_safetensors(optimizer)
        save_file(optimizer_tensors, str(partial / "optimizer.safetensors"), metadata=optimizer_metadata)
        (partial / "training_state.json").write_text(json.dumps({**state, "model_config": grown_flags}))
        from t2i.text_pretraining import TRAINED_TEXT_ENCODER_FOLDER

        text_encoder = checkpoint.parent / TRAINED_TEXT_ENCODER_FOLDER
        if text_encoder.is_dir() and not (output_dir / text_encoder.name).exists():
            shutil.copytree(text_encoder, output_dir / f".{text_encoder.name}.partial", dirs_exist_ok=True)
            publish_folder(output_dir / f".{text_encoder.name}.partial", output_dir / text_encoder.name)
        publish_folder(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        for leftover in output_dir.glob(".*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    return final


EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
"""The dtypes `export_checkpoint` can store a generator in, by name. bfloat16 is not one: on 512 images of a masks +
palette generator its 8-bit mantissa moved pixels by up to 118 levels of 255 (16 % of 8-bit values changed),
float16's 11 bits by up to 4.8 (2.2 %) (docs/results.md, "Half-precision storage of the generator")."""


def publish_new_folder(partial: Path, final: Path) -> None:
    """Rename a fully written folder to ``final``, which must not exist: unlike `publish_folder` it never replaces
    anything, so a folder that appeared at ``final`` meanwhile (another export, a user's files) is left as it is.

    Raises:
        CheckpointError: ``final`` exists (``partial`` is left for the caller to remove).
    """
    fsync_tree(partial)
    if final.exists():  # os.rename would also replace an empty directory; nothing that holds files can be lost
        raise CheckpointError(f"{final} appeared while exporting; nothing was written there")
    try:
        os.rename(partial, final)
    except OSError as error:  # ENOTEMPTY / EEXIST: it appeared between the check and the rename
        raise CheckpointError(f"{final} appeared while exporting; nothing was written there ({error})") from error
    fsync_tree(final.parent)


def averaged_generator_state(checkpoints: Sequence[Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """The mean of the trained generator G's tensors over ``checkpoints`` of one run (uniform checkpoint averaging:
    Polyak averaging of a GAN's generator, Yazıcı et al., ICLR 2019), and their common training state.

    Every floating-point tensor is averaged in float64, BatchNorm's running statistics included (measured as good as
    recalibrating them, docs/results.md, round 13); integer tensors (``num_batches_tracked``) are the last
    checkpoint's. One checkpoint gives its own tensors.

    Raises:
        CheckpointError: a file that is missing, unreadable or not finite, or checkpoints whose recorded model flags
            or text encoders differ (named).
    """
    first_state = None
    total: dict[str, torch.Tensor] = {}
    for checkpoint in checkpoints:
        if legacy_pickles(checkpoint):
            raise CheckpointError(f"{checkpoint} holds accelerate's pickles; rewrite it first with python -m t2i.training convert {checkpoint}")
        state = _recorded_state(checkpoint)
        tensors = _read_state_file(checkpoint, "model.safetensors", "exported")[0]
        broken = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if broken is not None:
            raise CheckpointError(f"{checkpoint / 'model.safetensors'}: tensor {broken!r} holds NaN or infinite values, so {checkpoint} cannot be exported")
        if first_state is None:
            first_state = state
        for key in ("model_config", "text_encoder_fingerprint"):
            if state.get(key) != first_state.get(key):
                raise CheckpointError(f"{checkpoint} and {checkpoints[0]} record different {key}s: only checkpoints of one model average")
        if total and (total.keys() != tensors.keys() or any(total[k].shape != v.shape for k, v in tensors.items())):
            raise CheckpointError(f"{checkpoint / 'model.safetensors'} holds other tensors than {checkpoints[0] / 'model.safetensors'}")
        for key, value in tensors.items():
            total[key] = total.get(key, 0) + value.double() if value.is_floating_point() else value  # an int: the last one's
    return {k: (v / len(checkpoints)).to(tensors[k].dtype) if tensors[k].is_floating_point() else v for k, v in total.items()}, state


def _exported_model_card(checkpoint: Path, output_dir: Path, state: dict, averaged: Sequence[Path], average_from: int | None,
                         generator_dtype: torch.dtype, text_encoder_path: Path) -> tuple[ModelCardInfo, dict]:
    """The model card of an exported checkpoint, and the training_summary.json that `python -m t2i.evaluation
    --update_model_card` adds its numbers to: the run's card facts (its finished run's summary, when there is one)
    with this checkpoint's step and wall time, the export command after the training command, and no metric of
    the run's own generator (only its text encoder's, which the export keeps)."""
    dtype = next(name for name, value in EXPORT_DTYPES.items() if value == generator_dtype)
    export = shlex.join(["python", "-m", "t2i.training", "export", str(checkpoint), str(output_dir), "--text_encoder_path",
                         str(text_encoder_path.resolve()), "--generator_dtype", dtype,
                         *([] if average_from is None else ["--average_from", str(average_from)])])
    seconds, batch, processes = (state.get(k) for k in ("train_seconds", "per_process_batch_size", "num_processes"))
    recorded = {  # what the checkpoint itself records
        "model_id": output_dir.name,
        "text_encoder": f"the text encoder of {text_encoder_path}",
        "resolution": state["model_config"].get("resolution"),
        "training_steps": state.get("global_step"),
        "train_batch_size": batch * processes if isinstance(batch, int) and isinstance(processes, int) else None,
        "wall_time_hours": seconds / 3600 if isinstance(seconds, (int, float)) else None,
        # GAN-INT-CLS is GAN-CLS plus GAN-INT's terms, which a checkpoint does not record: claim only GAN-CLS.
        "tags": [tag for tag in MODEL_CARD_TAGS if tag != "gan-int-cls"],
    }
    summary_file = checkpoint.parent / "training_summary.json"
    missing = "# the training command was not recorded: the run had not saved its summary"
    try:
        run = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    except (OSError, ValueError):
        run, missing = {}, f"# the training command was not recorded: the run's {summary_file.name} is unreadable"
    ended = run.get("training_steps") if isinstance(run, dict) else None
    fields = {f.name for f in dataclasses.fields(ModelCardInfo)} - {"evaluation_protocol", "evaluation_table"}

    def card_from(facts: dict) -> ModelCardInfo:
        card = {**recorded, **{k: v for k, v in facts.items() if k in fields and v is not None}}
        metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
        training = card.get("training_command") or missing
        if facts.get("training_command") and isinstance(ended, int) and ended != recorded["training_steps"]:
            training += (f"\n# (the run's command as it ended, at step {ended}; this checkpoint is step "
                         f"{recorded['training_steps']}, which an earlier phase may have written with other flags)")
        card.update(model_id=output_dir.name, training_command=f"{training}\n# exported: {export}",
                    training_steps=recorded["training_steps"], wall_time_hours=recorded["wall_time_hours"],
                    metrics={k: v for k, v in metrics.items() if k.startswith("text_encoder_") and type(v) in (int, float)})
        return ModelCardInfo(**card)

    try:
        info = card_from(run if isinstance(run, dict) else {})
        render_model_card(info)
    except (TypeError, ValueError, AttributeError):  # a damaged summary costs the card the run's facts, not the export
        info = card_from({})
    return info, {**dataclasses.asdict(info), "exported_from": [c.name for c in averaged], "generator_dtype": dtype}


def export_checkpoint(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, text_encoder_path: str | os.PathLike | None = None,
                      generator_dtype: torch.dtype = torch.float32, average_from: int | None = None,
                      prompt: str = "a flower with five red petals and a yellow centre", num_images: int = 8) -> tuple[Path, float]:
    """Write ``output_dir``: a pipeline folder (what a run saves at its end) whose generator is ``checkpoint``'s
    trained generator G, with the text encoder the run trained with. Its model card and training_summary.json carry
    the run's facts (from the run's summary once it has finished), this checkpoint's step, the export command, and
    the checkpoints it holds (``exported_from``); `python -m t2i.evaluation --update_model_card` adds the scores. An EMA copy is not exported:
    its BatchNorm statistics are G's until a run recalibrates them as it saves it (the run's ``best_generator`` and
    final pipeline hold the recalibrated one).

    ``text_encoder_path`` is what the run's ``--text_encoder_path`` was (a saved pipeline such as ``pretrained``, or
    a text-encoder folder; the default is the run folder holding the checkpoint, once the run has saved its pipeline
    there). A checkpoint written since runs record their text encoder's fingerprint is refused with any other one;
    an older checkpoint only with one of another width. A ``joint_image_encoder`` folder beside the text encoder comes
    along (R-precision's image encoder).

    ``average_from`` STEP exports the mean of G over every checkpoint of the run folder from STEP to ``checkpoint``'s
    step (`averaged_generator_state`): a GAN's last checkpoints swing (round 12: mean agreement 0.523–0.548 over
    six), and their average scored above every one of them (round 13).

    ``generator_dtype`` ``torch.float16`` stores the generator's weights in half the bytes (what lets a masks +
    palette generator fit the 25 MB of ``pretrained/``); `GanClsPipeline.from_pretrained` computes in float32
    whatever the files store. The folder is written under a unique hidden name beside ``output_dir``
    (``.NAME.*.partial``), loaded back with `GanClsPipeline.from_pretrained` and renamed when complete; a failure or
    an interrupt removes it, a SIGKILL leaves it.

    Returns:
        The folder, and the largest difference (0–1 pixel scale) between ``num_images`` images of ``prompt`` (seed
        0) drawn by the loaded-back pipeline and by the float32 weights: 0.0 for float32; for float16 about 0.6 of
        255 on these images, up to about 5 on others (docs/results.md).

    Raises:
        ValueError: a ``generator_dtype`` not in `EXPORT_DTYPES`; an ``average_from`` after ``checkpoint``'s step, or
            one that leaves a single checkpoint to average.
        CheckpointError: a checkpoint file that is missing, unreadable, not finite or does not fit the recorded model
            (named); a text encoder that is not the run's; an ``output_dir`` that exists, appears while exporting, or
            is named like a training checkpoint.
        OSError: ``text_encoder_path`` holds no text encoder, or ``output_dir``'s parent cannot be created or
            written to.
    """
    from t2i.pipeline import GanClsPipeline
    from t2i.text_encoders import TextEncoder, with_position_states
    from t2i.text_pretraining.joint_embedding import JOINT_IMAGE_ENCODER_FOLDER

    checkpoint, output_dir = Path(checkpoint).resolve(), Path(output_dir).resolve()
    text_encoder_path = checkpoint.parent if text_encoder_path is None else Path(text_encoder_path)
    if generator_dtype not in EXPORT_DTYPES.values():
        raise ValueError(f"generator_dtype must be one of {', '.join(f'torch.{n}' for n in EXPORT_DTYPES)}, got {generator_dtype!r}")
    if output_dir.exists():
        raise CheckpointError(f"{output_dir} exists; export into a new folder")
    if CHECKPOINT_PATTERN.match(output_dir.name):
        raise CheckpointError(f"{output_dir.name} is a training checkpoint's name (--resume_from_checkpoint latest would take "
                              "the pipeline for one): export into a folder named otherwise")
    averaged = [checkpoint]
    if average_from is not None:
        step = _recorded_state(checkpoint).get("global_step")
        if isinstance(average_from, bool) or not isinstance(average_from, int) or average_from < 0:
            raise ValueError(f"average_from must be a training step (a whole number ≥ 0), got {average_from!r}")
        if not isinstance(step, int) or average_from >= step:
            raise ValueError(f"average_from must be a step before {checkpoint.name}'s ({step}), got {average_from!r}")
        averaged = [c for c in list_checkpoints(checkpoint.parent) if average_from <= int(CHECKPOINT_PATTERN.match(c.name).group(1)) <= step]
        if len(averaged) < 2:
            raise ValueError(f"{checkpoint.parent} holds only {[c.name for c in averaged]} from step {average_from} to {step}: "
                             "averaging needs two checkpoints or more")
    tensors, state = averaged_generator_state(averaged)
    generator = _recorded_generator(checkpoint, "model.safetensors", tensors, state["model_config"]).eval()
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)  # a parent that is a file fails here, before any work
    except OSError as error:
        raise OSError(f"cannot write {output_dir}: cannot make the folder {output_dir.parent} ({error.strerror or error})") from error
    if text_encoder_path == checkpoint.parent and not (text_encoder_path / "model_index.json").is_file():
        raise CheckpointError(f"{text_encoder_path} holds no saved pipeline yet (the run has not finished): pass the run's "
                              "--text_encoder_path as --text_encoder_path")
    try:
        text_encoder = TextEncoder.from_pretrained(str(text_encoder_path))
        if generator.config.text_attention_heads:  # the run read the encoder's position states (train_accelerate.py)
            with_position_states(text_encoder.model)
    except (OSError, ValueError) as error:  # which argument it is, for a command whose arguments are all paths
        raise OSError(f"text_encoder_path {text_encoder_path}: {error}") from error
    recorded = state.get("text_encoder_fingerprint")
    if recorded is not None and text_encoder.fingerprint() != recorded:
        raise CheckpointError(f"{text_encoder_path}'s text encoder is not the one {checkpoint} was trained with (fingerprint "
                              f"{text_encoder.fingerprint()}, recorded {recorded}): pass the run's --text_encoder_path")
    if text_encoder.embedding_dim != generator.config.text_embed_dim:
        raise CheckpointError(f"{text_encoder_path}'s text encoder gives {text_encoder.embedding_dim}-d embeddings, but "
                              f"{checkpoint}'s generator was trained on {generator.config.text_embed_dim}-d ones: pass the run's --text_encoder_path")
    pipeline = GanClsPipeline(tokenizer=text_encoder.tokenizer, text_encoder=text_encoder.model, generator=generator)

    def draw(model: GanClsPipeline) -> torch.Tensor:
        return model(prompt, num_images_per_prompt=num_images, generator=torch.Generator().manual_seed(0), output_type="pt").images

    reference = draw(pipeline)
    try:
        partial = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    except OSError as error:  # the raw error names the hidden temporary folder, which the user never asked for
        raise OSError(f"cannot write {output_dir}: {error.strerror or error} in {output_dir.parent}") from error
    try:
        partial.chmod(default_mode(directory=True))  # mkdtemp's folder is private; the published one is like any other
        if generator_dtype == torch.float16:  # storage only: from_pretrained computes in float32
            pipeline.generator.half()
        card, summary = _exported_model_card(checkpoint, output_dir, state, averaged, average_from, generator_dtype, text_encoder_path)
        pipeline.save_with_model_card(partial, card, remote_code=False)
        (partial / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        image_encoder = (text_encoder_path / JOINT_IMAGE_ENCODER_FOLDER) if text_encoder_path.is_dir() else None
        if image_encoder is not None and image_encoder.is_dir():
            shutil.copytree(image_encoder, partial / JOINT_IMAGE_ENCODER_FOLDER)
        difference = (draw(GanClsPipeline.from_pretrained(partial)) - reference).abs().max().item()
        publish_new_folder(partial, output_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return output_dir, difference
