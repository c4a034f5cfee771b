"""Everything that touches the Hub: resolving names to folders, safetensors-only checks, and the model card.

Loading never unpickles. Before any weights are read, a folder is checked for pickle-only checkpoints, truncated
safetensors files and configs whose shapes disagree with the stored tensors, so each of those fails with an error
that names the file and the problem instead of a stack trace from deep inside a loader.
"""

import importlib.resources
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.models.modeling_utils import ModelMixin
from huggingface_hub import EvalResult, ModelCard, ModelCardData, snapshot_download
from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download")
# The repository's top-level model_card.md, shipped inside the package (t2i/assets/model_card.md links to it), so an
# installed t2i renders the same card as a checkout.


def model_card_template() -> Path:
    """The packaged ``model_card.md`` (the repository's top-level template, shipped as package data)."""
    # Looked up when needed, not at import: this module is also uploaded beside the weights as remote code
    # (GanClsPipeline.save_with_model_card), where no t2i package is installed.
    return Path(str(importlib.resources.files("t2i") / "assets" / "model_card.md"))
# What DataParallel / DistributedDataParallel (`module.`) and torch.compile (`_orig_mod.`) put before every key.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that t2i refuses to load: pickled, truncated, or inconsistent with its config."""


def can_only_be_a_path(name: str) -> bool:
    """True for a name no Hub repo id can have: it starts with ".", "/" or "~", has a backslash or more than one "/"."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_pretrained_folder(name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs) -> Path:
    """Return a local folder for a folder path or a Hub repo id (downloaded through ``snapshot_download``).

    ``HF_ENDPOINT`` selects the Hub server, as everywhere in huggingface_hub. With ``subfolder`` only that part
    of a Hub repo is downloaded; the returned path is the repo root either way.

    Raises:
        FileNotFoundError: a missing folder that can only be a path, or a repo id the Hub does not serve.
        CheckpointError: a file where a folder was expected.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; expected a model folder or a Hub repo id")
    if can_only_be_a_path(str(name_or_path)):  # not worth a Hub round trip, nor the Hub's wording
        raise FileNotFoundError(f"{str(name_or_path)!r}: no such model folder (and, being a path, not a Hub repo id "
                                "of the form 'org/name')")
    allow_patterns = [f"{subfolder}/*"] if subfolder else None
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=allow_patterns, **hub_kwargs))
    except (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as error:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is neither a local folder nor a Hub repo reachable at {endpoint}: {error}"
        ) from error


def check_weight_files(folder: Path) -> list[Path]:
    """Refuse pickle-only folders and unreadable safetensors files; return the safetensors files."""
    safetensors_files = sorted(folder.glob("*.safetensors"))
    if not safetensors_files:
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:
            raise CheckpointError(
                f"{pickles[0]}: pickle checkpoint and no .safetensors file in {folder}. t2i never unpickles "
                "(a pickle can run arbitrary code); convert it to safetensors in a trusted environment."
            )
        return []
    for file in safetensors_files:
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key).get_shape()
        except Exception as error:  # safetensors raises its own untyped errors for every kind of damage
            raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({error})") from error
    return safetensors_files


def _build_from_config(model_class: type, folder: Path) -> torch.nn.Module:
    if issubclass(model_class, ModelMixin):
        return model_class.from_config(model_class.load_config(folder))
    return model_class._from_config(model_class.config_class.from_pretrained(folder))


def _expected_shapes(model_class: type, folder: Path) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """The model's state-dict shapes, and the names of its non-persistent buffers (which files may still hold)."""
    # Build the model on the meta device: shapes without memory or initialisation cost.
    with torch.device("meta"):
        model = _build_from_config(model_class, folder)
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    return state, {name for name, _ in model.named_buffers()} - set(state)


def _wrapper_prefix(stored: set[str], expected: set[str]) -> str | None:
    for prefix in WRAPPER_PREFIXES:
        if stored and all(key.startswith(prefix) for key in stored) and {key[len(prefix):] for key in stored} == expected:
            return prefix
    return None


def check_component_folder(model_class: type, folder: str | os.PathLike) -> str | None:
    """Check one model folder before loading: safetensors only, intact files, config shapes equal weight shapes, and
    the stored tensor names equal the model's.

    Returns the wrapper prefix (``"module."`` or ``"_orig_mod."``) when every stored name carries the same one and
    is otherwise right (a DDP-wrapped or compiled model saved as is), else None. Raises `CheckpointError` for any
    other difference, naming the file and the first missing and unexpected tensors: loading would leave those
    weights random (diffusers and transformers only log "newly initialized").
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    safetensors_files = check_weight_files(folder)
    if not safetensors_files or not issubclass(model_class, (ModelMixin, PreTrainedModel)):
        return None
    try:
        expected, non_persistent = _expected_shapes(model_class, folder)
    except (ValueError, TypeError, RuntimeError) as error:  # RuntimeError: e.g. a negative width
        raise CheckpointError(f"{folder / 'config.json'}: invalid {model_class.__name__} config ({error})") from error
    if issubclass(model_class, ModelMixin):
        saved_class = model_class.load_config(folder).get("_class_name")
        if saved_class not in (None, model_class.__name__):
            raise CheckpointError(f"{folder / 'config.json'}: a {saved_class} config where a {model_class.__name__} is expected")
    stored_keys: set[str] = set()
    for file in safetensors_files:
        with safe_open(file, framework="pt") as handle:
            stored_keys.update(handle.keys())
    prefix = _wrapper_prefix(stored_keys - non_persistent, set(expected))
    if prefix is not None:
        logger.warning("%s: every tensor name starts with %r (a wrapped model saved as is); loading without the prefix", folder, prefix)
    else:
        # t2i's own models must match exactly. A third-party transformers checkpoint may legitimately hold more (a head,
        # CLIP's vision tower) and name its tensors with the model's base prefix, which transformers resolves itself.
        own = issubclass(model_class, SafetensorsOnlyMixin)
        base = f"{getattr(model_class, 'base_model_prefix', '')}." if not own else None
        names = {key[len(base):] if base and base != "." and key.startswith(base) else key for key in stored_keys}
        missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected) - non_persistent)
        if missing or (unexpected and own):
            files = ", ".join(str(f) for f in safetensors_files)
            raise CheckpointError(
                f"{files}: the stored tensors do not match the {model_class.__name__} that {folder / 'config.json'} describes: "
                f"{len(missing)} missing (first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]}). "
                "Loading it would leave weights random."
            )
        if unexpected:
            logger.info("%s: %d stored tensors the %s does not use (e.g. %s)", folder, len(unexpected), model_class.__name__, unexpected[:3])
    for file in safetensors_files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                stored = tuple(handle.get_slice(key).get_shape())
                if issubclass(model_class, SafetensorsOnlyMixin):  # t2i's own models are small: every value is checked
                    tensor = handle.get_tensor(key)
                    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                        raise CheckpointError(f"{file}: tensor {key!r} holds NaN or infinite values")
                key = key[len(prefix):] if prefix else key
                if key in expected and expected[key] != stored:
                    raise CheckpointError(
                        f"{file}: tensor {key!r} has shape {list(stored)}, but {folder / 'config.json'} "
                        f"describes a {model_class.__name__} that needs {list(expected[key])}. "
                        "The config and the weights come from different models."
                    )
    return prefix


def load_without_prefix(model_class: type, folder: Path, prefix: str) -> torch.nn.Module:
    """Build ``model_class`` from ``folder``'s config and load its safetensors weights with ``prefix`` removed from
    every name (strictly: every tensor must be used). The model is returned in eval mode, as ``from_pretrained`` does."""
    model = _build_from_config(model_class, folder)
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update({key[len(prefix):]: tensor for key, tensor in load_file(file).items()})
    model.load_state_dict(state, strict=True)
    return model.eval()


def own_aligned_memory_(module: torch.nn.Module) -> torch.nn.Module:
    """Copy parameters and buffers that still point into a memory-mapped file into fresh, aligned memory.

    Tensors read from safetensors can sit at unaligned offsets of the mapped file, and CPU matrix kernels then take
    a different path whose rounding differs in the last bit: a loaded model would not reproduce its saved images
    exactly. Owning the memory also frees the file, so a checkpoint can be rotated while its model is in use.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()
    return module


class SafetensorsOnlyMixin:
    """Makes ``from_pretrained`` check the folder first and read safetensors only; accepts folders and Hub ids."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        """Load from a folder or Hub id after ``check_component_folder``; never falls back to pickle files."""
        subfolder = kwargs.pop("subfolder", None)
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        folder = resolve_pretrained_folder(pretrained_model_name_or_path, subfolder, **hub_kwargs) / (subfolder or "")
        prefix = check_component_folder(cls, folder)
        if prefix is not None:
            return own_aligned_memory_(load_without_prefix(cls, folder, prefix))
        kwargs["use_safetensors"] = True
        return own_aligned_memory_(super().from_pretrained(str(folder), *args, **kwargs))


def check_before_loading(model_class: type, folder: str | os.PathLike) -> str | None:
    """``check_component_folder``, unless ``model_class`` runs it in its own ``from_pretrained`` (then None)."""
    if not issubclass(model_class, SafetensorsOnlyMixin):
        return check_component_folder(model_class, folder)
    return None


def default_mode(directory: bool = False) -> int:
    """The permission bits a new file (0o666) or folder (0o777) gets under this process's umask. safetensors writes
    its files owner-only (0600) and ``tempfile.mkdtemp`` its folders 0700, whatever the umask; a saved pipeline is
    read by servers and containers running as other users."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


MODEL_CARD_TAGS = ("text-to-image", "gan", "gan-cls", "gan-int-cls", "t2i")


@dataclass
class ModelCardInfo:
    """The facts a model card states. Unknown facts stay ``None`` and the card says "not recorded"."""

    model_id: str
    dataset_name: str | None = None
    dataset_description: str | None = None
    synthetic_data: bool = False
    text_encoder: str | None = None
    resolution: int | None = None
    training_command: str | None = None
    training_steps: int | None = None
    train_batch_size: int | None = None
    wall_time_hours: float | None = None
    hardware: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation_protocol: str | None = None
    evaluation_table: str | None = None
    widget_prompts: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    tags: list[str] = field(default_factory=lambda: list(MODEL_CARD_TAGS))


def render_model_card(info: ModelCardInfo, template_path: str | os.PathLike | None = None, **extra: Any) -> ModelCard:
    """Fill ``model_card.md`` (Jinja; default ``model_card_template()``) with ``info`` and ``extra`` template
    variables; metadata carries library, tags, datasets and eval results."""
    eval_results = [
        EvalResult(
            task_type="text-to-image",
            dataset_type=info.dataset_name or "unknown",
            dataset_name=info.dataset_name or "unknown",
            metric_type=name,
            metric_value=value,
        )
        for name, value in info.metrics.items()
    ]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license=info.license,
        tags=info.tags,
        datasets=[info.dataset_name] if info.dataset_name else None,
        model_name=info.model_id,
        eval_results=eval_results or None,
        widget=[{"text": prompt} for prompt in info.widget_prompts] or None,
    )
    fields: dict[str, Any] = {k: v for k, v in vars(info).items() if k not in ("tags", "widget_prompts")}
    fields.setdefault("gan_int", "gan-int-cls" in info.tags)  # the objective's name follows the tags
    return ModelCard.from_template(card_data, template_path=str(template_path or model_card_template()), **fields, **extra)
