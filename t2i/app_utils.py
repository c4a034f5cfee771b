"""Everything app.py needs besides the UI: loading a model with a fallback, checking user input, producing results.

Nothing here imports gradio, so the logic is testable on its own and the app stays a thin layer of widgets. User
mistakes raise ``InputError`` with a message written for the user; app.py turns it into ``gr.Error``.
"""

from __future__ import annotations

import collections
import functools
import importlib.resources
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .models import GanClsGenerator, output_layers, standing_batch_norm_
from .pipeline import GanClsPipeline
from .text_encoders import CharCnnRnnConfig, CharCnnRnnEncoder, CharTokenizer, TextEncoder, unreadable_characters

logger = logging.getLogger(__name__)

# The embedded default: the repository's pretrained/ folder, shipped inside the package (t2i/assets/pretrained links to it).
DEFAULT_MODEL_FOLDER = Path(str(importlib.resources.files("t2i") / "assets" / "pretrained"))
MAX_IMAGES = 16
MIN_STEPS, MAX_STEPS = 2, 16
MAX_SEED = 2**32 - 1  # the range numpy, diffusers and most UIs accept
MAX_PROMPT_CHARS = 300  # for sub-word tokenizers: far above a one-sentence caption, far below 256 tokens
UPSCALE_SIZE = 256
KEEP_OUTPUTS_SECONDS = 3600  # how long a request's images stay downloadable
# Reed-style captions for the examples, used until a model card lists its own (``widget:`` entries).
EXAMPLE_PROMPTS = (
    "this flower has five pointed purple petals and a yellow center",
    "a flower with many thin white petals surrounding a large yellow disc",
    "the petals of this flower are pink with white edges",
    "this flower has six round red petals with black spots",
    "a flower with three heart-shaped blue petals and a small white center",
    "this bloom has several oval orange petals arranged in two layers",
    "the petals are lavender with purple stripes and the center is maroon",
    "this flower has four yellow petals with red edges and a small green center",
)
# The tiny fallback's text encoder: enough to show that the text changes the images, small enough to build in ~0.1 s.
TINY_TEXT_ENCODER_CONFIG = dict(conv_channels=[16, 16, 16], rnn_hidden_size=16, embed_dim=32)


# The model card metrics the header shows, with their labels (text-image agreement per attribute, and fidelity).
HEADER_METRICS = {
    "text_image_agreement_petal_color": "petal colour", "text_image_agreement_center_color": "centre colour",
    "text_image_agreement_petal_count_word": "count bin", "oracle_frechet_distance_over_real": "FD / real-vs-real",
}


class InputError(ValueError):
    """A request the app refuses, with a message meant for the person who sent it."""


@dataclass
class LoadedModel:
    """A pipeline plus what the UI says about it: name, origin, training data, example prompts, load problems."""

    pipeline: GanClsPipeline
    name: str
    source: str
    trained_on: str
    examples: list[str] = field(default_factory=lambda: list(EXAMPLE_PROMPTS))
    notice: str | None = None  # why this is not the model that was asked for, if it is not
    metrics: dict[str, float] = field(default_factory=dict)  # the model card's measured numbers

    def description(self) -> str:
        """Markdown for the header of the app."""
        config = self.pipeline.generator.config
        lines = [
            f"**Model:** `{self.name}` · **from:** {self.source} · {config.resolution}×{config.resolution} px · "
            f"text encoder: {type(self.pipeline.text_encoder).__name__}",
            f"**Trained on:** {self.trained_on}",
        ]
        shown = [(label, self.metrics[name]) for name, label in HEADER_METRICS.items() if name in self.metrics]
        if shown:
            lines.append("**Measured on unseen test classes** (attribute oracle, model card): "
                         + " · ".join(f"{label} {value:.2f}" for label, value in shown))
        if self.notice:
            lines.insert(0, f"⚠️ {self.notice}")
        return "\n\n".join(lines)


def build_random_pipeline(
    seed: int = 0, ngf: int = 8, text_encoder: TextEncoder | None = None, resolution: int = 64
) -> GanClsPipeline:
    """An untrained pipeline with seeded weights: the app's stand-in when no trained model is available.

    Without ``text_encoder`` a tiny char-CNN-RNN is used. The generator's BatchNorm statistics are calibrated on a
    random batch, because untrained statistics (mean 0, var 1) squash every image to flat grey.
    """
    torch.manual_seed(seed)
    if text_encoder is None:
        text_encoder = TextEncoder(CharTokenizer(), CharCnnRnnEncoder(CharCnnRnnConfig(**TINY_TEXT_ENCODER_CONFIG)))
    generator = GanClsGenerator(text_embed_dim=text_encoder.embedding_dim, ngf=ngf, resolution=resolution)
    first_text_layer, output_conv = output_layers(generator)
    # Untrained, the text would barely move the images; a wider projection makes its effect visible.
    torch.nn.init.normal_(first_text_layer.weight, std=1.0)
    noise, text = torch.randn(64, generator.config.noise_dim), torch.randn(64, text_encoder.embedding_dim)
    standing_batch_norm_(generator, [(noise, text)])
    with torch.no_grad():
        # DCGAN's N(0, 0.02) output layer keeps tanh near 0 (flat grey); unit variance before tanh shows patterns.
        pre_tanh = []
        hook = output_conv.register_forward_hook(lambda module, inputs, output: pre_tanh.append(output))
        generator(noise, text)
        hook.remove()
        output_conv.weight /= pre_tanh[0].std()
    return GanClsPipeline(tokenizer=text_encoder.tokenizer, text_encoder=text_encoder.model, generator=generator)


def read_model_card(folder: Path) -> tuple[str | None, list[str], dict[str, float]]:
    """The "Training data" section, the ``widget`` example prompts and the evaluation metrics of
    ``folder/README.md`` (None, [], {} if absent)."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None, [], {}
    card = ModelCard.load(readme)
    section = re.search(r"^## Training data\s*\n(.*?)(?=^## |\Z)", card.text, flags=re.M | re.S)
    trained_on = section.group(1).strip() if section else None
    if not trained_on and card.data.datasets:
        trained_on = ", ".join(f"`{name}`" for name in card.data.datasets)
    widget = card.data.to_dict().get("widget") or []
    examples = [entry["text"] for entry in widget if isinstance(entry, dict) and entry.get("text")]
    metrics = {result.metric_type: float(result.metric_value) for result in (card.data.eval_results or [])}
    return trained_on, examples, metrics


def load_model(name_or_path: str | None, default_folder: Path = DEFAULT_MODEL_FOLDER) -> LoadedModel:
    """Load the requested model (Hub id or folder), else ``default_folder``, else a seeded random pipeline.

    Never raises for a missing or broken model: the app must start anyway, so the failure becomes ``notice``
    (with the full traceback in the server log).
    """
    notice = None
    requested = name_or_path or (str(default_folder) if (default_folder / "model_index.json").is_file() else None)
    if requested:
        try:
            return _load_pretrained(requested)
        except Exception as error:  # any failure: the fallback below keeps the app usable and the notice says why
            logger.exception("could not load model %r", requested)
            notice = f"Could not load `{requested}`: {str(error).rstrip('.')}. Showing an untrained stand-in instead."
    else:
        notice = f"No trained model yet (`{default_folder.name}/` is empty): showing an untrained stand-in."
    return LoadedModel(
        pipeline=build_random_pipeline(seed=0),
        name="untrained stand-in (seed 0)",
        source="built at start-up",
        trained_on="nothing: random weights, so the images are patterns that do not depict the prompt.",
        notice=notice,
    )


def _load_pretrained(name_or_path: str) -> LoadedModel:
    pipeline = GanClsPipeline.from_pretrained(name_or_path)
    local = Path(name_or_path).is_dir()
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    trained_on, examples, metrics = read_model_card(Path(name_or_path) if local else Path(pipeline.config._name_or_path))
    return LoadedModel(
        pipeline=pipeline.to("cuda" if torch.cuda.is_available() else "cpu"),
        name=Path(name_or_path).resolve().name if local else name_or_path,
        source=f"local folder `{Path(name_or_path).resolve()}`" if local else f"Hugging Face Hub ({endpoint})",
        trained_on=trained_on or "not stated (the model has no model card with a “Training data” section).",
        examples=examples if len(examples) >= 2 else list(EXAMPLE_PROMPTS),  # the Interpolate tab needs two
        metrics=metrics,
    )


# ----------------------------------------------------------------------------------------------------------------
# Input checks


def check_int(value: object, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or ``InputError`` naming the parameter and its range."""
    wanted = f"{name} must be a whole number from {low} to {high}"
    if isinstance(value, bool) or value is None or value == "":
        raise InputError(f"{wanted}; got {'nothing' if value in (None, '') else repr(value)}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float, e.g. 10**400
        raise InputError(f"{wanted}; got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise InputError(f"{wanted}; got {value!r}.")
    return int(number)


def prompt_limit(tokenizer) -> int:
    """How many characters of a prompt the model reads: the tokenizer's length for Reed's char tokenizer."""
    return tokenizer.model_max_length if isinstance(tokenizer, CharTokenizer) else MAX_PROMPT_CHARS


def clean_prompt(prompt: object, tokenizer) -> tuple[str, list[str]]:
    """The prompt exactly as the model will read it, plus notices about what was changed.

    Control and invisible formatting characters (including right-to-left overrides) are removed, characters the
    tokenizer cannot represent are dropped, whitespace is collapsed and the text is cut to ``prompt_limit``.
    Raises ``InputError`` when nothing readable is left.
    """
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text; got {type(prompt).__name__}.")
    limit = prompt_limit(tokenizer)
    notices = []
    # Far more than the model reads is cut before the character checks, so a megabyte of text costs nothing.
    text = unicodedata.normalize("NFC", prompt[: 10 * limit])
    # Cc: control characters (NUL, BEL, ...); Cf: invisible formatting (bidi overrides, zero-width joiners).
    visible = "".join(
        " " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    if len(visible) != len(text):
        notices.append(f"Removed {len(text) - len(visible)} control or invisible formatting character(s).")
    unknown = unreadable_characters(tokenizer, visible)
    if unknown:
        visible = "".join(ch for ch in visible if ch not in unknown)
    text = " ".join(visible.split())
    if not text:
        if unknown:
            raise InputError(
                "the prompt has no characters this model can read (it reads English letters, digits and "
                f"punctuation); it ignores {''.join(unknown[:20])}. Describe the flower in English."
            )
        raise InputError("the prompt is empty: describe the flower, e.g. 'a flower with five red petals'.")
    if unknown:
        notices.append(f"Ignored characters the model cannot read: {' '.join(unknown[:20])}")
    if len(text) > limit:
        notices.append(f"The prompt was cut to {limit} characters, as many as the model reads.")
        text = text[:limit].rstrip()
    return text, notices


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    """Images, the files to serve for them, and the facts the UI shows next to them."""

    images: list[Image.Image]
    files: list[str]  # one PNG per image, named after the request, with the prompt and seed in its metadata
    summary: str  # Markdown: what was generated, from which seed(s) and prompt(s), plus any notices
    strip_files: list[str] = field(default_factory=list)  # interpolations: the strip as one PNG and as a GIF


def make_strip(images: list[Image.Image]) -> Image.Image:
    """The images side by side at their native size, in one RGB image."""
    strip = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width
    return strip


def upscale(images: list[Image.Image], size: int = UPSCALE_SIZE) -> list[Image.Image]:
    """Lanczos-resized copies for viewing; these are interpolated pixels, not model output."""
    return [im.resize((size, size), Image.Resampling.LANCZOS) for im in images]


@dataclass
class _Job:
    prompt: str
    num_images: int
    seed: int
    done: threading.Event = field(default_factory=threading.Event)
    images: list[Image.Image] | None = None
    error: BaseException | None = None


class _Batcher:
    """Runs the generations that arrive while the model is busy as one forward pass (leader/follower batching).

    The first waiting thread to get the model runs every pending job, its own included; the others find their
    images ready. A request that finds the model idle runs at once, so batching never adds waiting time.
    Gradio's own batching cannot be used: a ``gr.Error`` for one bad request would fail its whole batch, and
    Gradio 6's ``validator`` (which would reject bad requests before batching) does not work with batched events.
    """

    def __init__(self, run: Callable[[list[_Job]], None], max_images: int):
        self._run, self._max_images = run, max_images
        self._pending: list[_Job] = []
        self._pending_lock, self._model_lock = threading.Lock(), threading.Lock()

    def __call__(self, job: _Job) -> list[Image.Image]:
        with self._pending_lock:
            self._pending.append(job)
        while not job.done.is_set():
            with self._model_lock:
                if job.done.is_set():
                    break
                batch = self._take()
                try:
                    self._run(batch)
                except BaseException as error:  # a failed forward pass fails its jobs, not the waiting threads
                    for other in batch:
                        other.error = error
                finally:
                    for other in batch:
                        other.done.set()
        if job.error is not None:
            raise job.error
        return job.images

    def _take(self) -> list[_Job]:
        with self._pending_lock:
            count, total = 0, 0
            for job in self._pending:
                if count and total + job.num_images > self._max_images:
                    break
                count, total = count + 1, total + job.num_images
            batch, self._pending = self._pending[:count], self._pending[count:]
        return batch


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
        self.output_folder = Path(tempfile.mkdtemp(prefix="t2i-app-"))
        weakref.finalize(self, shutil.rmtree, self.output_folder, ignore_errors=True)
        self._folders: collections.deque[tuple[float, Path]] = collections.deque()
        self._folders_lock = threading.Lock()
        self._keep_outputs_seconds = keep_outputs_seconds

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
        return Result(images, files, _summary(f"{n} image(s) from seed **{seed}** for “{text}”", images, notices))

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
        text_a, text_b = self._prompt(prompt_a, notices, "prompt A"), self._prompt(prompt_b, notices, "prompt B")
        steps = check_int(num_steps, "number of steps", MIN_STEPS, MAX_STEPS)
        seed = check_int(seed, "seed", 0, MAX_SEED)
        images = self.pipeline.interpolate(text_a, text_b, steps, generator=torch.Generator().manual_seed(seed)).images
        what = f"{steps} steps from “{text_a}” to “{text_b}”, noise fixed by seed **{seed}**"
        metadata = {"prompt_a": text_a, "prompt_b": text_b, "seed": seed}
        return self._strip_result(images, f"interpolate-seed{seed}", metadata, _summary(what, images, notices))

    @torch.inference_mode()
    def interpolate_noise(self, prompt: object, seed_a: object, seed_b: object, num_steps: object) -> Result:
        """A strip for one prompt while the noise moves from seed A's to seed B's (each as Generate draws it)."""
        notices: list[str] = []
        text = self._prompt(prompt, notices)
        seed_a, seed_b = check_int(seed_a, "seed A", 0, MAX_SEED), check_int(seed_b, "seed B", 0, MAX_SEED)
        steps = check_int(num_steps, "number of steps", MIN_STEPS, MAX_STEPS)
        # One generator per end: the ends are the noise of Generate's first image for each seed.
        generators = [torch.Generator().manual_seed(seed_a), torch.Generator().manual_seed(seed_b)]
        images = self.pipeline.interpolate_noise(text, steps, generator=generators).images
        what = f"{steps} steps for “{text}”, noise moving from seed **{seed_a}** to seed **{seed_b}**"
        metadata = {"prompt": text, "seed_a": seed_a, "seed_b": seed_b}
        stem = f"interpolate-seed{seed_a}-{seed_b}"
        return self._strip_result(images, stem, metadata, _summary(what, images, notices))

    def _strip_result(self, images: list[Image.Image], stem: str, metadata: dict, summary: str) -> Result:
        files = self._save(images, stem, metadata)
        folder = Path(files[0]).parent
        make_strip(images).save(folder / f"t2i-{stem}-strip.png", pnginfo=self._png_info(metadata))
        # Ping-pong loop, so the animation runs back and forth without a jump.
        frames = images + images[-2:0:-1]
        frames[0].save(folder / f"t2i-{stem}.gif", save_all=True, append_images=frames[1:], duration=150, loop=0)
        return Result(images, files, summary, [str(folder / f"t2i-{stem}-strip.png"), str(folder / f"t2i-{stem}.gif")])

    def _save(self, images: list[Image.Image], stem: str, metadata: dict) -> list[str]:
        """Write PNGs into a fresh folder for this request, to be served from there.

        Returning files instead of PIL images gives downloads a meaningful name and the prompt in their metadata,
        and avoids a Gradio race: it writes PIL outputs in place under their content hash, so two identical
        requests at once would overwrite a file while it is being served.
        """
        folder = self._new_folder()
        paths = []
        for i, image in enumerate(images):
            paths.append(str(folder / f"t2i-{stem}-{i + 1:02d}.png"))
            image.save(paths[-1], pnginfo=self._png_info({**metadata, "index": i}))
        return paths

    def _png_info(self, metadata: dict) -> PngInfo:
        info = PngInfo()
        info.add_text("t2i", json.dumps({"model": self.model.name, **metadata}, ensure_ascii=False))
        return info

    def _new_folder(self) -> Path:
        folder = Path(tempfile.mkdtemp(dir=self.output_folder))
        now = time.monotonic()
        expired = []
        with self._folders_lock:
            self._folders.append((now, folder))
            while now - self._folders[0][0] > self._keep_outputs_seconds:
                expired.append(self._folders.popleft()[1])
        for old in expired:
            shutil.rmtree(old, ignore_errors=True)
        return folder


def _summary(what: str, images: list[Image.Image], notices: list[str]) -> str:
    size = f"{images[0].width}×{images[0].height} px each (the model's native size)"
    return "\n".join([f"{what}; {size}.", *[f"- ⚠️ {notice}" for notice in notices]])
