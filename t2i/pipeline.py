"""GanClsPipeline: caption → text embedding → one generator forward pass → images."""

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.pipelines.pipeline_loading_utils import _get_library_or_raise
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import HfApi
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .hub import (
    HUB_KWARGS,
    CheckpointError,
    ModelCardInfo,
    check_before_loading,
    own_aligned_memory_,
    render_model_card,
    resolve_pretrained_folder,
)
from .models import GanClsGenerator
from .text_encoders import check_readable, encode_text, text_embedding_dim

OUTPUT_TYPES = ("pil", "np", "pt")


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # Linear paths between Gaussian draws pass through low-norm points the generator never saw in training;
    # spherical interpolation keeps the norm typical (White, "Sampling Generative Networks", 2016).
    a_unit, b_unit = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.arccos((a_unit * b_unit).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


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

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text_encoder: PreTrainedModel, generator: GanClsGenerator):
        super().__init__()
        if text_embedding_dim(text_encoder) != generator.config.text_embed_dim:
            raise CheckpointError(
                f"the text encoder gives {text_embedding_dim(text_encoder)}-d embeddings but the generator expects "
                f"{generator.config.text_embed_dim}-d (generator/config.json text_embed_dim)"
            )
        text_encoder = text_encoder.eval().requires_grad_(False)  # frozen by design, in training too
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, generator=generator.eval())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "GanClsPipeline":
        """Load from a folder or Hub repo id, safetensors only, after checking every component's files."""
        folder = resolve_pretrained_folder(pretrained_model_name_or_path, **{k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs})
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise CheckpointError(f"{folder} has no model_index.json: it is not a saved pipeline folder")
        for name, spec in json.loads(index_file.read_text()).items():
            if isinstance(spec, list) and spec[0] and name not in kwargs:
                check_before_loading(getattr(_get_library_or_raise(spec[0]), spec[1]), folder / name)
        pipeline = super().from_pretrained(str(folder), use_safetensors=True, **kwargs)
        own_aligned_memory_(pipeline.text_encoder)
        return pipeline

    @torch.inference_mode()
    def encode_prompt(self, prompt: str | list[str]) -> torch.Tensor:
        """Embed one caption or a list of captions into [B, D].

        Raises:
            ValueError: not a string or list of strings; an empty or whitespace-only caption; or a caption with no
                character the tokenizer can read (e.g. "玫瑰花" for the char-CNN-RNN), named in the message.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        empty = [i for i, p in enumerate(prompts) if not p.strip()]
        if empty:
            where = f" (item {empty[0]} of the list)" if len(prompts) > 1 else ""
            raise ValueError(f"prompt is empty{where}: describe the flower, e.g. 'a flower with five red petals'")
        check_readable(self.tokenizer, prompts)
        return encode_text(self.tokenizer, self.text_encoder, prompts).to(self.generator.dtype)

    def prepare_latents(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None = None, device: torch.device | None = None
    ) -> torch.Tensor:
        """Noise [batch_size, noise_dim] on ``device`` (default: the execution device).

        It is drawn on the ``torch.Generator``'s device (the CPU by default), so a seed gives the same images on CPU
        and GPU; a list of generators draws one row from each.
        """
        shape = (batch_size, self.generator.config.noise_dim)
        device = self._execution_device if device is None else device
        return randn_tensor(shape, generator=generator, device=device, dtype=self.generator.dtype)

    @torch.inference_mode()
    def _render(self, noise: torch.Tensor, text_embeds: torch.Tensor, output_type: str, return_dict: bool, device: torch.device):
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        images = self.generator(noise.to(device), text_embeds.to(device))
        images = to_unit_range(images)
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
            num_images_per_prompt: images per caption, each from its own noise vector.
            generator: a seeded ``torch.Generator`` for reproducible noise.
            latents: noise [len(prompts) * num_images_per_prompt, noise_dim] to use instead of sampling.
            output_type: ``"pil"``, ``"np"`` (float [B, H, W, 3] in [0, 1]) or ``"pt"`` (float [B, 3, H, W] in [0, 1]).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            prompt_embeds: precomputed text embeddings [B, D]; the text encoder is then not run.
        """
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        if generator is not None and not isinstance(generator, (torch.Generator, list)):
            raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        if prompt_embeds is not None and (prompt_embeds.ndim != 2 or prompt_embeds.shape[1] != self.generator.config.text_embed_dim):
            raise ValueError(f"prompt_embeds must have shape [B, {self.generator.config.text_embed_dim}], got {tuple(prompt_embeds.shape)}")
        # Looked up once: diffusers finds the execution device by walking every module (about 0.5 ms here).
        device = self._execution_device
        text_embeds = self.encode_prompt(prompt) if prompt_embeds is None else prompt_embeds.to(self.generator.dtype)
        text_embeds = text_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if latents is None:
            latents = self.prepare_latents(text_embeds.shape[0], generator, device)
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
        """Images along the straight line between two captions' embeddings (GAN-INT), with one noise vector held fixed."""
        device = self._execution_device
        steps = self._interpolation_steps(num_steps, device)
        e_a, e_b = self.encode_prompt([prompt_a, prompt_b]).to(device)
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

        ``generator`` may be a list of two generators, one per end point (e.g. two seeds).
        """
        device = self._execution_device
        steps = self._interpolation_steps(num_steps, device)
        text_embeds = self.encode_prompt(prompt).expand(num_steps, -1)
        z_a, z_b = self.prepare_latents(2, generator, device)
        return self._render(_slerp(z_a, z_b, steps), text_embeds, output_type, return_dict, device)

    def _interpolation_steps(self, num_steps: int, device: torch.device) -> torch.Tensor:
        if not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an integer ≥ 2, got {num_steps!r}")
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
        """Save the pipeline with a model card rendered from ``model_card.md`` and upload it; returns the commit URL."""
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_with_model_card(folder, model_card or ModelCardInfo(model_id=repo_id))
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, create_pr=create_pr)

    def save_with_model_card(self, save_directory: str | os.PathLike, model_card: ModelCardInfo) -> None:
        """``save_pretrained`` plus README.md rendered from ``model_card.md``, filled with the pipeline's own facts."""
        self.save_pretrained(save_directory)
        model_card = dataclasses.replace(
            model_card,
            resolution=model_card.resolution or self.generator.config.resolution,
            text_encoder=model_card.text_encoder or type(self.text_encoder).__name__,
        )
        render_model_card(model_card).save(Path(save_directory) / "README.md")


__all__ = ["GanClsPipeline", "to_unit_range"]
