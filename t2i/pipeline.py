"""GanClsPipeline: caption → text embedding → one generator forward pass → images."""

import ast
import dataclasses
import importlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.pipelines.pipeline_loading_utils import _get_library_or_raise
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import HfApi
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .hub import (
    HUB_KWARGS,
    CheckpointError,
    ModelCardInfo,
    check_before_loading,
    default_mode,
    own_aligned_memory_,
    render_model_card,
    resolve_pretrained_folder,
)
from .text_encoders import CharCnnRnnConfig, check_readable, encode_text, max_text_length, text_embedding_dim, with_position_states

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
# A call holds all its images at once (4,096 images of 64 px are 200 MB as float32): far more than anyone looks at,
# far fewer than a slip such as num_images_per_prompt=10**6, which would exhaust the memory. More come from more calls.
MAX_IMAGES_PER_CALL = 4096
# The generator runs on this many images at a time, so its activations stay small however many a call makes.
RENDER_BATCH_SIZE = 256
# This package's modules that save_with_model_card uploads for diffusers' trust_remote_code loading (each with the
# modules it imports relatively), and the names they get there.
REMOTE_CODE_MODULES = {"t2i.pipeline": "pipeline", "t2i.models": "models", "t2i.text_encoders": "text_encoders"}
_OWN_MODULES = {remote: module for module, remote in REMOTE_CODE_MODULES.items()}
_LOADED_AS_REMOTE_CODE = __name__ != "t2i.pipeline"  # this file inlined by self_contained_source, run by diffusers


def _require_t2i() -> None:
    if _LOADED_AS_REMOTE_CODE:
        raise RuntimeError("save_with_model_card and push_to_hub need the t2i package (pip install t2i); this pipeline "
                           "was loaded as remote code. save_pretrained works, and t2i loads what it writes.")


def _component_class(library: str, class_name: str) -> type:
    # model_index.json names t2i's modules ("t2i.models"), the remote code's ("models"), or, saved by an old
    # version from a pipeline loaded as remote code, diffusers' cache module ("diffusers_modules.local.models"):
    # all of them mean t2i's own classes, never code from the folder.
    short = library.rsplit(".", 1)[-1] if library.startswith("diffusers_modules.") else library
    own = _OWN_MODULES.get(short, library if library in REMOTE_CODE_MODULES else None)
    if own is None:
        found = getattr(_get_library_or_raise(library), class_name, None)
    elif _LOADED_AS_REMOTE_CODE:  # every t2i class this pipeline needs is defined in this very file
        found = globals().get(class_name)
    else:
        found = getattr(importlib.import_module(own), class_name, None)
    if not (isinstance(found, type) and issubclass(found, (ModelMixin, PreTrainedModel, PreTrainedTokenizerBase))):
        raise CheckpointError(f"model_index.json names [{library!r}, {class_name!r}], which is not a model or tokenizer class")
    return found


def _check_generator(generator, count: int, what: str) -> None:
    """Refuse anything but None, one torch.Generator, or a list of exactly ``count`` of them (one per ``what``)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, list) or not all(isinstance(g, torch.Generator) for g in generator):
        raise ValueError(f"generator must be a torch.Generator or a list of them, got {generator!r:.80}")
    if len(generator) != count:
        raise ValueError(f"a list of {len(generator)} generator(s) for {what}: pass a list of {count} (one each), "
                         "or a single generator")


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # Linear paths between Gaussian draws pass through low-norm points the generator never saw in training;
    # spherical interpolation keeps the norm typical (White, "Sampling Generative Networks", 2016).
    a_unit, b_unit = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.arccos((a_unit * b_unit).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def _share_like_other_files(folder: Path) -> None:
    for path in folder.rglob("*.safetensors"):
        path.chmod(default_mode())


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Generator output [B, C, H, W] in [-1, 1] (any float dtype) → float32 in [0, 1], the pipeline's "pt" output."""
    return (images.float() / 2 + 0.5).clamp(0, 1)


class GanClsPipeline(DiffusionPipeline):
    """Text-to-image with a GAN-CLS generator: ``pipeline("a red flower").images[0]``.

    Components: ``tokenizer`` and ``text_encoder`` (any pair ``encode_text`` accepts: char-CNN-RNN, a sentence
    transformer, CLIP) and ``generator`` (``GanClsGenerator``). Both models are put in eval mode, so BatchNorm uses
    its running statistics and an image never depends on the other images of its batch; the text encoder is frozen.
    """

    model_cpu_offload_seq = "text_encoder->generator"

    # `generator` is a GanClsGenerator, annotated by its diffusers base class: loaded as remote code (see
    # save_with_model_card) models.py runs once per component that needs it, and diffusers' type check would
    # compare against a class object of an earlier run.
    def __init__(self, tokenizer: PreTrainedTokenizerBase, text_encoder: PreTrainedModel, generator: ModelMixin):
        super().__init__()
        if generator.config.get("text_attention_heads", 0) and text_encoder.config.model_type == CharCnnRnnConfig.model_type:
            # A generator with word-level attention reads the char-CNN-RNN's position states, however it was saved
            # (the embedded default keeps the encoder mean-pooled, as every other user of it reads it).
            with_position_states(text_encoder)
        if text_embedding_dim(text_encoder) != generator.config.text_embed_dim:
            raise CheckpointError(
                f"the text encoder gives {text_embedding_dim(text_encoder)}-d embeddings but the generator expects "
                f"{generator.config.text_embed_dim}-d (generator/config.json text_embed_dim)"
            )
        text_encoder = text_encoder.eval().requires_grad_(False)  # frozen by design, in training too
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, generator=generator.eval())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None, **kwargs) -> "GanClsPipeline":
        """Load from a folder or Hub repo id, safetensors only, after checking every component's files.

        ``kwargs`` may hold the Hub download options (``revision``, ``token``, ``cache_dir``, ``local_files_only``),
        ``dtype`` (diffusers' newer name for ``torch_dtype``) and components to use instead of the saved ones
        (``tokenizer=...``). A folder that also carries the remote code of ``save_with_model_card`` is loaded with
        this package's own classes: the code in the folder is never run here. The loaded models compute in
        ``torch_dtype`` (default ``torch.float32``) whatever dtype their files store (a generator stored in float16 by
        ``python -m t2i.training export --generator_dtype float16`` computes in float32).

        Raises:
            CheckpointError: no ``model_index.json``, or a component whose files are missing, corrupt, pickled or
                hold the wrong tensors.
            FileNotFoundError: neither a folder nor a Hub repo.
            TypeError: an unknown keyword argument, ``trust_remote_code``, or a dtype that is not a ``torch.dtype``.
            ValueError: ``use_safetensors=False``.
        """
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        dtype = kwargs.pop("dtype", None) if torch_dtype is None else torch_dtype
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"torch_dtype must be a torch.dtype such as torch.bfloat16, got {dtype!r}")
        # Weights may be stored in float16 to halve the files (`t2i.training.export_checkpoint`); they compute in
        # float32 unless asked, as diffusers' pipelines do (transformers alone would keep a stored float16).
        dtype = torch.float32 if dtype is None else dtype
        if kwargs.pop("use_safetensors", True) is not True:
            raise ValueError("t2i loads safetensors only (never pickles): use_safetensors=False is not supported")
        if "trust_remote_code" in kwargs:
            raise TypeError("GanClsPipeline.from_pretrained never runs a folder's code, so it takes no trust_remote_code "
                            "(plain diffusers does: DiffusionPipeline.from_pretrained(repo, trust_remote_code=True))")
        folder = resolve_pretrained_folder(pretrained_model_name_or_path, **hub_kwargs)
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise CheckpointError(f"{folder} has no model_index.json: it is not a saved pipeline folder")
        index = json.loads(index_file.read_text())
        components = {name: kwargs.pop(name) for name in ("tokenizer", "text_encoder", "generator") if name in kwargs}
        if kwargs:
            raise TypeError(f"GanClsPipeline.from_pretrained got unexpected arguments {sorted(kwargs)}")
        for name in ("tokenizer", "text_encoder", "generator"):
            if name in components:
                continue
            if not isinstance(index.get(name), list) or len(index[name]) != 2:
                raise CheckpointError(f"{index_file} names no [library, class] for the {name!r} component")
            model_class = _component_class(*index[name])
            check_before_loading(model_class, folder / name)
            load_kwargs = {} if name == "tokenizer" else {"use_safetensors": True}
            if issubclass(model_class, ModelMixin):  # diffusers warns about a cast after loading
                load_kwargs["torch_dtype"] = dtype
            component = model_class.from_pretrained(str(folder / name), **load_kwargs)
            if name != "tokenizer" and component.dtype != dtype:
                component = component.to(dtype)
            components[name] = component
        pipeline = cls(**components)
        own_aligned_memory_(pipeline.text_encoder)
        pipeline.register_to_config(_name_or_path=str(folder))  # the local folder (a Hub snapshot for a repo id)
        return pipeline

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' ``save_pretrained``, with ``model_index.json`` naming t2i's modules (also for a pipeline that was
        loaded as remote code, whose classes live in ``diffusers_modules``) and no local path of the loaded folder."""
        super().save_pretrained(save_directory, **kwargs)
        _share_like_other_files(Path(save_directory))
        index_file = Path(save_directory) / "model_index.json"
        index = json.loads(index_file.read_text())
        index.pop("_name_or_path", None)
        for name in ("tokenizer", "text_encoder", "generator"):
            if index[name][0].startswith("diffusers_modules."):
                index[name][0] = _OWN_MODULES.get(index[name][0].rsplit(".", 1)[-1], index[name][0])
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @torch.inference_mode()
    def encode_prompt(self, prompt: str | list[str]) -> torch.Tensor:
        """Embed one caption or a list of captions into [B, D].

        Raises:
            ValueError: not a string or list of strings; an empty or whitespace-only caption; or a caption with no
                character the tokenizer can read (e.g. "玫瑰花" for the char-CNN-RNN), named in the message.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts:
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.80}")
        names = ["prompt"] if isinstance(prompt, str) else [f"prompt[{i}]" for i in range(len(prompts))]
        self._check_prompts(prompts, names)
        return self._encode_checked(prompts)

    @torch.inference_mode()
    def _encode_checked(self, prompts: list[str]) -> torch.Tensor:
        """`encode_prompt` for prompts `_check_prompts` has accepted (under the names the caller gave them)."""
        limit = max_text_length(self.tokenizer, self.text_encoder)
        lengths = map(len, self.tokenizer(prompts, truncation=False, verbose=False)["input_ids"])  # one call for the batch
        for text, length in zip(prompts, lengths):  # as diffusers' pipelines do: the cut is not silent
            if length > limit:
                logger.warning("The prompt %r is %d tokens long; the text encoder reads the first %d.", text[:40] + "…", length, limit)
        return encode_text(self.tokenizer, self.text_encoder, prompts).to(self.generator.dtype)

    def _check_prompts(self, prompts: list, names: list[str]) -> None:
        """Refuse a prompt that is not a string, is empty, or has nothing the tokenizer reads; the error names it."""
        for prompt, name in zip(prompts, names):
            if not isinstance(prompt, str):
                raise ValueError(f"{name} must be a string, got {prompt!r:.80}")
            if not prompt.strip():
                raise ValueError(f"{name} is empty: describe the flower, e.g. 'a flower with five red petals'")
            check_readable(self.tokenizer, [prompt], name)

    def prepare_latents(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None, device: torch.device | None = None
    ) -> torch.Tensor:
        """Noise [batch_size, noise_dim] on ``device`` (default: the execution device).

        It is drawn on the ``torch.Generator``'s device (the CPU by default), so a seed gives the same images on CPU
        and GPU; a list of generators draws one row from each.

        Raises:
            ValueError: a list of generators whose length is not ``batch_size``.
        """
        _check_generator(generator, batch_size, f"{batch_size} noise vector(s)")
        shape = (batch_size, self.generator.config.noise_dim)
        device = self._execution_device if device is None else device
        return randn_tensor(shape, generator=generator, device=device, dtype=self.generator.dtype)

    @torch.inference_mode()
    def _render(self, noise: torch.Tensor, text_embeds: torch.Tensor, output_type: str, return_dict: bool, device: torch.device):
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        pairs = zip(noise.to(device).split(RENDER_BATCH_SIZE), text_embeds.to(device).split(RENDER_BATCH_SIZE))
        images = torch.cat([to_unit_range(self.generator(z, e)) for z, e in pairs])
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        prompt_embeds: torch.Tensor | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``num_images_per_prompt`` images per caption.

        Args:
            prompt: a caption or a list of captions (or pass ``prompt_embeds`` instead).
            num_images_per_prompt: images per caption, each from its own noise vector; at most
                ``MAX_IMAGES_PER_CALL`` (4,096) images per call in all.
            generator: a seeded ``torch.Generator`` for reproducible noise.
            latents: noise [len(prompts) * num_images_per_prompt, noise_dim] to use instead of sampling.
            output_type: ``"pil"``, ``"np"`` (float [B, H, W, 3] in [0, 1]) or ``"pt"`` (float [B, 3, H, W] in [0, 1]).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            prompt_embeds: precomputed text embeddings [B, D]; the text encoder is then not run.

        Raises:
            ValueError: no prompt or both prompt and embeddings, an empty or unreadable prompt, a bad count or more
                than ``MAX_IMAGES_PER_CALL`` images, a bad output type, generator list length, or embeddings or latents
                that are not a finite tensor of the right shape.
        """
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        if prompt_embeds is not None:
            if not isinstance(prompt_embeds, torch.Tensor):
                raise ValueError(f"prompt_embeds must be a torch.Tensor, got {type(prompt_embeds).__name__} (encode_prompt makes one)")
            if prompt_embeds.ndim != 2 or prompt_embeds.shape[0] < 1 or prompt_embeds.shape[1] != self.generator.config.text_embed_dim:
                raise ValueError(f"prompt_embeds must have shape [B, {self.generator.config.text_embed_dim}] with B ≥ 1, got {tuple(prompt_embeds.shape)}")
            if not torch.isfinite(prompt_embeds).all():
                raise ValueError("prompt_embeds hold NaN or infinite values: the generator would draw nothing but NaN")
        num_prompts = len(prompt) if isinstance(prompt, (list, tuple)) else 1 if prompt is not None else prompt_embeds.shape[0]
        if num_prompts * num_images_per_prompt > MAX_IMAGES_PER_CALL:
            raise ValueError(
                f"{num_prompts} prompt(s) × num_images_per_prompt={num_images_per_prompt} is "
                f"{num_prompts * num_images_per_prompt} images; one call makes at most {MAX_IMAGES_PER_CALL}: split them "
                "over several calls, each with its own seeded generator"
            )
        # Looked up once: diffusers finds the execution device by walking every module (about 0.5 ms here).
        device = self._execution_device
        text_embeds = self.encode_prompt(prompt) if prompt_embeds is None else prompt_embeds.to(self.generator.dtype)
        text_embeds = text_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        _check_generator(generator, text_embeds.shape[0], f"{text_embeds.shape[0]} image(s) (prompts × num_images_per_prompt)")
        if latents is None:
            latents = self.prepare_latents(text_embeds.shape[0], generator, device)
        elif not isinstance(latents, torch.Tensor):
            raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__} (torch.from_numpy converts an array)")
        elif not torch.isfinite(latents).all():
            raise ValueError("latents hold NaN or infinite values: the generator would draw nothing but NaN")
        elif tuple(latents.shape) != (text_embeds.shape[0], self.generator.config.noise_dim):
            raise ValueError(
                f"latents must have shape {(text_embeds.shape[0], self.generator.config.noise_dim)}, got {tuple(latents.shape)}"
            )
        else:
            latents = latents.to(self.generator.dtype)
        return self._render(latents, text_embeds, output_type, return_dict, device)

    def interpolate(
        self,
        prompt_a: str,
        prompt_b: str,
        num_steps: int = 8,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Images along the straight line between two captions' embeddings (GAN-INT), with one noise vector held fixed.

        Raises:
            ValueError: ``prompt_a`` or ``prompt_b`` (named in the message) not a string, empty or unreadable;
                ``num_steps`` not an integer from 2 to ``MAX_IMAGES_PER_CALL``; a bad generator list or output type.
        """
        _check_generator(generator, 1, "interpolate's one noise vector")
        self._check_prompts([prompt_a, prompt_b], ["prompt_a", "prompt_b"])
        device = self._execution_device
        steps = self._interpolation_steps(num_steps, device)
        e_a, e_b = self._encode_checked([prompt_a, prompt_b]).to(device)
        text_embeds = torch.lerp(e_a, e_b, steps)
        noise = self.prepare_latents(1, generator, device).expand(num_steps, -1)
        return self._render(noise, text_embeds, output_type, return_dict, device)

    def interpolate_noise(
        self,
        prompt: str,
        num_steps: int = 8,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Images for one caption while the noise moves (spherically) between two draws: style changes, content stays.

        ``generator`` may be a list of two generators, one per end point (e.g. two seeds). Two generators seeded alike
        draw the same end points, and every frame is then the same image: that is logged as a warning.

        Raises:
            ValueError: ``prompt`` not a string, empty or unreadable; ``num_steps`` not an integer from 2 to
                ``MAX_IMAGES_PER_CALL``; a bad generator list or output type.
        """
        _check_generator(generator, 2, "interpolate_noise's two end points")
        self._check_prompts([prompt], ["prompt"])  # one caption: a list would give one strip per caption
        device = self._execution_device
        steps = self._interpolation_steps(num_steps, device)
        text_embeds = self._encode_checked([prompt]).expand(num_steps, -1)
        z_a, z_b = self.prepare_latents(2, generator, device)
        if torch.equal(z_a, z_b):
            logger.warning("interpolate_noise: both end points drew the same noise (two generators seeded alike?), "
                           "so all %d frames are the same image", num_steps)
        return self._render(_slerp(z_a, z_b, steps), text_embeds, output_type, return_dict, device)

    def _interpolation_steps(self, num_steps: int, device: torch.device) -> torch.Tensor:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 2 <= num_steps <= MAX_IMAGES_PER_CALL:
            raise ValueError(f"num_steps must be an integer from 2 to {MAX_IMAGES_PER_CALL}, got {num_steps!r:.80}")
        return torch.linspace(0, 1, num_steps, device=device, dtype=self.generator.dtype)[:, None]

    def push_to_hub(
        self,
        repo_id: str,
        model_card: ModelCardInfo | None = None,
        commit_message: str = "Upload GanClsPipeline",
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Save the pipeline with a model card rendered from ``model_card.md`` and upload it; returns the commit URL.

        Raises:
            RuntimeError: loaded as remote code, without t2i (see ``save_with_model_card``); before any upload.
        """
        _require_t2i()
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_with_model_card(folder, model_card or ModelCardInfo(model_id=repo_id))
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, create_pr=create_pr)

    def save_with_model_card(self, save_directory: str | os.PathLike, model_card: ModelCardInfo, remote_code: bool = True) -> None:
        """``save_pretrained`` plus README.md rendered from ``model_card.md``, filled with the pipeline's own facts.

        With ``remote_code`` (the default, and what ``push_to_hub`` uploads) the folder also carries the pipeline's
        and components' source, laid out for diffusers' custom-code loading, so that anyone can load it without t2i:
        ``DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)``.

        Raises:
            RuntimeError: this pipeline was loaded as remote code, without t2i installed: publishing reads t2i's own
                source and card template (``save_pretrained`` works).
        """
        _require_t2i()
        self.save_pretrained(save_directory)
        if remote_code:
            self._write_remote_code(Path(save_directory))
        model_card = dataclasses.replace(
            model_card,
            resolution=model_card.resolution or self.generator.config.resolution,
            text_encoder=model_card.text_encoder or type(self.text_encoder).__name__,
        )
        render_model_card(model_card, remote_code=remote_code).save(Path(save_directory) / "README.md")

    def _write_remote_code(self, folder: Path) -> None:
        # diffusers' layout: model_index's `_class_name` is [module, class] with module.py at the top of the repo,
        # and a custom component ["module", "Class"] loads from <component>/module.py. diffusers downloads only
        # that one file of a component folder, so each file is self-contained (see self_contained_source).
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text())
        targets = {"_class_name": ("t2i.pipeline", folder)}
        for name in ("tokenizer", "text_encoder", "generator"):
            if index[name][0] in REMOTE_CODE_MODULES:
                targets[name] = (index[name][0], folder / name)
        for name, (module_name, target) in targets.items():
            remote_name = REMOTE_CODE_MODULES[module_name]
            (target / f"{remote_name}.py").write_text(self_contained_source(module_name), encoding="utf-8")
            index[name] = [remote_name, "GanClsPipeline" if name == "_class_name" else index[name][1]]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def self_contained_source(module_name: str) -> str:
    """The source of a t2i module with each relative import (``from .hub import X``) replaced by the imported
    module's own source, recursively, so that it runs as one file without t2i installed.

    Raises:
        ValueError: a relative import this cannot inline (``from . import x``, ``import ... as``, or one below the
            top level of a module), or two inlined modules defining the same top-level name.
    """
    defined: dict[str, str] = {}  # top-level name → the module that defines it
    future: set[str] = set()
    parts: list[str] = []

    def inline(name: str) -> None:
        module = importlib.import_module(name)
        source = Path(module.__file__).read_text(encoding="utf-8")
        tree = ast.parse(source)
        lines = source.splitlines(keepends=True)
        dropped: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__"):
                if node.level and (node.level != 1 or node.module is None or node not in tree.body
                                   or any(alias.asname for alias in node.names)):
                    raise ValueError(f"{name}, line {node.lineno}: cannot inline this relative import")
                if node.module == "__future__":
                    future.update(alias.name for alias in node.names)
                else:
                    dependency = f"{module.__package__}.{node.module}"
                    if dependency not in done:
                        inline(dependency)
                dropped.update(range(node.lineno - 1, node.end_lineno))
        for node in tree.body:
            targets = [node] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else getattr(node, "targets", [])
            for target in targets:
                top = getattr(target, "name", getattr(target, "id", None))
                if top not in (None, "__all__", "logger") and defined.setdefault(top, name) != name:
                    raise ValueError(f"{top!r} is defined in both {defined[top]} and {name}: cannot inline them together")
        done.add(name)
        parts.append(f"# ---- {name} " + "-" * (100 - len(name)) + "\n"
                     + "".join(line for i, line in enumerate(lines) if i not in dropped))

    done: set[str] = set()
    inline(module_name)
    header = (f'"""{module_name} and the t2i modules it imports, in one file: generated by t2i '
              '(GanClsPipeline.save_with_model_card) for diffusers\' trust_remote_code loading."""\n')
    futures = "".join(f"from __future__ import {name}\n" for name in sorted(future))
    return header + futures + "\n" + "\n\n".join(parts)

__all__ = ["MAX_IMAGES_PER_CALL", "GanClsPipeline", "self_contained_source", "to_unit_range"]
