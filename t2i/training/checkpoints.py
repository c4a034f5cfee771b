"""Training checkpoints: accelerate's state (models as safetensors, optimizers, RNGs) plus t2i's own, made visible
atomically.

A checkpoint is written to ``.checkpoint-{step}.partial`` and renamed to ``checkpoint-{step}`` only when every
file is on disk, so `--resume_from_checkpoint latest` never picks up half a checkpoint, whatever moment a run is
killed at, and a full disk leaves the earlier checkpoints intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


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
    ema_generator: torch.nn.Module | None = None,
    checkpoints_total_limit: int | None = None,
) -> Path:
    """Write ``output_dir/checkpoint-{step}`` (step = ``training_state["global_step"]``) through a temporary folder.

    ``training_state`` (JSON) is written by the main process, ``rng_state`` (this process's ``torch.Generator``
    states) by every process as ``t2i_rng_{rank}.safetensors``. Older checkpoints beyond
    ``checkpoints_total_limit`` are removed after the new one is complete.
    """
    step = training_state["global_step"]
    final = Path(output_dir) / f"checkpoint-{step}"
    partial = Path(output_dir) / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial), safe_serialization=True)
        save_file(rng_state, str(partial / f"t2i_rng_{accelerator.process_index}.safetensors"))
        if accelerator.is_main_process:
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


def check_resumable(checkpoint: Path, num_processes: int, per_process_batch_size: int, model_config: dict | None = None) -> None:
    """Refuse, before any work, a checkpoint this launch cannot continue exactly.

    A run's random streams are per process and its batches are global, so a checkpoint continues only with the
    process count and per-process batch size it was written with (``training_state.json`` records both; for older
    checkpoints the count is that of their ``t2i_rng_*.safetensors`` files), and with the model it holds
    (``model_config``: the flags that shape G and D, also recorded; a flag a checkpoint does not record is newer
    than it, so it was off: 0, False or None). Every process runs this check on every file,
    and raises the same error, so none is left waiting for the others.

    Raises:
        ValueError: another process count, batch size or model, with what resumes the run.
        FileNotFoundError: a process's random-state file is missing (named).
    """
    state = json.loads((checkpoint / "training_state.json").read_text())
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

        flags = " ".join(flag(k, v) for k, (v, _) in sorted(changed.items()))
        raise ValueError(f"{checkpoint} holds another model: {', '.join(f'{k} {a!r} (now {b!r})' for k, (a, b) in sorted(changed.items()))}. "
                         f"Resume with the flags it was trained with ({flags}), or start a new run in another --output_dir.")
    for rank in range(num_processes):
        rng_file = checkpoint / f"t2i_rng_{rank}.safetensors"
        if not rng_file.is_file():
            raise FileNotFoundError(f"{rng_file}: this process's random-state file is missing, so {checkpoint} cannot be resumed exactly")


def load_checkpoint(accelerator, checkpoint: Path, ema_generator: torch.nn.Module | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore models, optimizers and RNGs; return the training state and this process's generator states."""
    accelerator.load_state(str(checkpoint))
    training_state = json.loads((checkpoint / "training_state.json").read_text())
    rng_state = load_file(str(checkpoint / f"t2i_rng_{accelerator.process_index}.safetensors"))
    if ema_generator is not None:
        ema_generator.load_state_dict(load_file(str(checkpoint / "ema_generator.safetensors")))
    return training_state, rng_state
