"""The model behind the UI (what app.py drives): one pipeline, an LRU of prompt embeddings, batching, and the app's
three actions, each checking its input and returning a ``Result``."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image

from .batching import _Batcher, _Job
from .inputs import MAX_IMAGES, MAX_SEED, MAX_STEPS, MIN_STEPS, InputError, check_int, clean_prompt
from .loading import LoadedModel
from .outputs import KEEP_OUTPUTS_SECONDS, OutputFolders, Result, escape_markdown, save_images, save_strip, summarize


class App:
    """The model behind the UI: one pipeline, an LRU of prompt embeddings, batching, and the app's three actions."""

    def __init__(
        self,
        model: LoadedModel,
        embedding_cache_size: int = 1024,
        max_batch_images: int = 64,
        keep_outputs_seconds: float = KEEP_OUTPUTS_SECONDS,
    ):
        self.model = model
        self.pipeline = model.pipeline
        # oneDNN's transposed convolutions run ~28 % faster channels-last on these CPUs (64 images: 57 vs 79 ms).
        self.pipeline.generator.to(memory_format=torch.channels_last)
        self.device = self.pipeline._execution_device
        # Bound per instance (not a decorated method), so the cache lives and dies with the app.
        self.embed = functools.lru_cache(maxsize=embedding_cache_size)(self.pipeline.encode_prompt)
        self._batcher = _Batcher(self._generate_batch, max_batch_images)
        # Each request writes its files into a folder of its own under ``output_folder``, which the UI serves
        # directly (see app.py); a folder is deleted once it is older than ``keep_outputs_seconds``.
        self._outputs = OutputFolders(keep_outputs_seconds)
        self.output_folder = self._outputs.root
        # Every result says so when the model is a stand-in, also to API clients, who never see the page's header.
        self._model_warning = f"**Not the requested model.** {model.notice}" if model.notice else None

    def _prompt(self, prompt: object, notices: list[str], label: str | None = None) -> str:
        # With two prompts, every message says which one it is about.
        prefix = f"{label}: " if label else ""
        try:
            text, changes = clean_prompt(prompt, self.pipeline.tokenizer)
        except InputError as error:
            raise InputError(f"{prefix}{error}") from None
        notices += [prefix + change for change in changes]
        return text

    def generate(self, prompt: object, num_images: object, seed: object) -> Result:
        """``num_images`` images for one prompt from one seed; concurrent calls share forward passes."""
        notices: list[str] = []
        text = self._prompt(prompt, notices)
        n = check_int(num_images, "number of images", 1, MAX_IMAGES)
        seed = check_int(seed, "seed", 0, MAX_SEED)
        images = self._batcher(_Job(text, n, seed))
        files = self._save(images, f"seed{seed}", {"prompt": text, "seed": seed})
        return Result(images, files, self._summary(f"{n} image(s) from seed **{seed}** for “{escape_markdown(text)}”", images, notices))

    @torch.inference_mode()
    def _generate_batch(self, jobs: list[_Job]) -> None:
        # Each job's noise comes from its own seeded generator, exactly as a call to the pipeline would draw it, so a
        # request gets the same images whether or not it shared a batch.
        embeds = torch.cat([self.embed(job.prompt).expand(job.num_images, -1) for job in jobs])
        # The device is passed: diffusers would otherwise find it by walking every module, once per job.
        noise = torch.cat([
            self.pipeline.prepare_latents(job.num_images, torch.Generator().manual_seed(job.seed), self.device)
            for job in jobs
        ])
        images = self.pipeline(prompt_embeds=embeds, latents=noise).images
        for job in jobs:
            job.images, images = images[: job.num_images], images[job.num_images :]

    @torch.inference_mode()
    def interpolate(self, prompt_a: object, prompt_b: object, num_steps: object, seed: object) -> Result:
        """A strip from ``prompt_a`` to ``prompt_b`` with the noise of ``seed`` held fixed (GAN-INT)."""
        notices: list[str] = []
        texts, errors = [], []
        for prompt, label in ((prompt_a, "prompt A"), (prompt_b, "prompt B")):
            try:
                texts.append(self._prompt(prompt, notices, label))
            except InputError as error:
                errors.append(str(error))
        if errors:  # both at once, so fixing A does not just uncover B's problem
            raise InputError(" ".join(errors))
        text_a, text_b = texts
        tokenize = self.pipeline.tokenizer
        if tokenize(text_a)["input_ids"] == tokenize(text_b)["input_ids"]:  # e.g. "red" and "RED" to Reed's tokenizer
            notices.append("Prompt A and prompt B read the same, so every frame is the same image: change one of them.")
        steps = check_int(num_steps, "number of steps", MIN_STEPS, MAX_STEPS)
        seed = check_int(seed, "seed", 0, MAX_SEED)
        images = self.pipeline.interpolate(text_a, text_b, steps, generator=torch.Generator().manual_seed(seed)).images
        what = f"{steps} steps from “{escape_markdown(text_a)}” to “{escape_markdown(text_b)}”, noise fixed by seed **{seed}**"
        metadata = {"prompt_a": text_a, "prompt_b": text_b, "seed": seed}
        return self._strip_result(images, f"interpolate-seed{seed}", metadata, self._summary(what, images, notices))

    @torch.inference_mode()
    def interpolate_noise(self, prompt: object, seed_a: object, seed_b: object, num_steps: object) -> Result:
        """A strip for one prompt while the noise moves from seed A's to seed B's (each as Generate draws it for one image)."""
        notices: list[str] = []
        text = self._prompt(prompt, notices)
        seed_a, seed_b = check_int(seed_a, "seed A", 0, MAX_SEED), check_int(seed_b, "seed B", 0, MAX_SEED)
        steps = check_int(num_steps, "number of steps", MIN_STEPS, MAX_STEPS)
        if seed_a == seed_b:
            notices.append(f"Seed A and seed B are both {seed_a}, so every frame is the same image: pick two different seeds.")
        # One generator per end: the ends are Generate's image for that seed with one image. torch draws a batch
        # of n rows from one seed differently from one row, so a 4-image batch's first image is not an end.
        generators = [torch.Generator().manual_seed(seed_a), torch.Generator().manual_seed(seed_b)]
        images = self.pipeline.interpolate_noise(text, steps, generator=generators).images
        what = f"{steps} steps for “{escape_markdown(text)}”, noise moving from seed **{seed_a}** to seed **{seed_b}**"
        metadata = {"prompt": text, "seed_a": seed_a, "seed_b": seed_b}
        stem = f"interpolate-seed{seed_a}-{seed_b}"
        return self._strip_result(images, stem, metadata, self._summary(what, images, notices))

    def _summary(self, what: str, images: list[Image.Image], notices: list[str]) -> str:
        return summarize(what, images, notices, self._model_warning)

    def _strip_result(self, images: list[Image.Image], stem: str, metadata: dict, summary: str) -> Result:
        files = self._save(images, stem, metadata)
        strip_files = save_strip(Path(files[0]).parent, images, stem, metadata, self.model.name)
        return Result(images, files, summary, strip_files)

    def _save(self, images: list[Image.Image], stem: str, metadata: dict) -> list[str]:
        """Write PNGs into a fresh folder for this request (see ``save_images``)."""
        return save_images(self._outputs.new_folder(), images, stem, metadata, self.model.name)
