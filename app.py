"""Gradio app and Hugging Face Space: describe a flower, get images from a GAN-CLS generator, and walk between
two descriptions or two noise vectors (GAN-INT).

    python app.py                     # the embedded default model in pretrained/ (if it cannot load: an untrained stand-in, and why)
    python app.py --model user/repo   # any saved GanClsPipeline: a Hub repo id or a local folder (or env T2I_MODEL)

API (gradio_client): /generate, /interpolate, /interpolate_noise; see README.md.
"""

import argparse
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr
import torch

from t2i.serving import (
    KEEP_OUTPUTS_SECONDS, MAX_IMAGES, MAX_SEED, MAX_STEPS, MIN_STEPS, App, InputError, load_model, serving_threads,
    upscale,
)

try:  # On a ZeroGPU Space this attaches a GPU for the length of each call; everywhere else it is not needed.
    from spaces import GPU as gpu
except ImportError:

    def gpu(fn: Callable) -> Callable:
        """No-op stand-in for ``spaces.GPU``."""
        return fn


logger = logging.getLogger("t2i.app")

# Up to 16 generations wait inside the app at once, so that those arriving together share one forward pass
# (t2i.serving.batching batches them; Gradio's batch=True cannot be used, see there). Interpolations run two at a time.
GENERATE_CONCURRENCY = 16
INTERPOLATE_CONCURRENCY = 2
RANDOM_SEED_JS = f"() => Math.floor(Math.random() * {MAX_SEED + 1})"
# Model output is shown with its real pixels (enlarged as blocks), so smoothing by the browser never passes for detail.
CSS = ".model-output img { image-rendering: pixelated; }"
# The summaries quote the user's prompt (escaped as Markdown by t2i.serving): no LaTeX either, so "$$...$$" stays text.
SUMMARY = dict(latex_delimiters=[])
# Gradio rebuilds its monitoring summary (a pandas DataFrame of up to 10,000 past events) after every event: 2.7 ms
# of CPU per request after 300 requests, 11 ms after 10,000. Every 100 events keeps /monitoring fresh enough.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Show ``InputError`` as a Gradio error: a message in the UI, a clean error for API clients, and one line in the
    server log instead of a traceback (a refused input is not a fault of the server; real errors keep theirs)."""
    try:
        yield
    except InputError as error:
        logger.info("refused input: %s", error)
        # duration=None: the message stays until closed (a toast that fades after 10 s leaves only "Error" behind).
        raise gr.Error(str(error), title="Please check your input", duration=None, print_exception=False) from None


def serve_in_place(folder: Path) -> None:
    """Let Gradio serve and return the files in ``folder`` as they are, checking this folder before any other.

    Copying each output image into Gradio's cache (path checks, hashing, a second file) was the largest share of
    the server's GIL time under load, so the app's own folder is a static path; each file is written once and kept
    as long as Gradio would keep its copy (``delete_cache`` in ``build_demo``).
    """
    gr.set_static_paths([folder])
    # Gradio checks every file it returns or serves against each static path in turn, resolving both paths each time
    # (~0.2 ms per check here; 12 checks for a 4-image request), and registers its own icons first, at import. Moving
    # this folder to the front makes it one check per file. The list is private: if it changes, only speed is lost.
    try:
        from gradio.data_classes import _StaticFiles
    except ImportError:
        return
    static_paths, resolved = getattr(_StaticFiles, "all_paths", None), folder.resolve()
    if isinstance(static_paths, list) and resolved in static_paths:
        static_paths.remove(resolved)
        static_paths.insert(0, resolved)


def create_app(model: str | None = None) -> gr.Blocks:
    """Load ``model`` (Hub id or folder; None: the embedded default) once and build the UI around it."""
    return build_demo(App(load_model(model)))


def build_demo(app: App) -> gr.Blocks:
    """The UI and the API endpoints, all served by ``app``."""
    examples = app.model.examples

    @gpu
    def generate(prompt: str, num_images: int, seed: int) -> tuple[list[str], str]:
        """Generate images of a flower from a description.

        Args:
            prompt: the description, e.g. "this flower has five pointed purple petals and a yellow center".
            num_images: how many images, 1 to 16.
            seed: noise seed, 0 to 4294967295; the same seed and prompt give the same images.

        Returns:
            The images (PNG files at the model's native size) and a Markdown summary naming the seed and any
            changes made to the prompt.
        """
        with user_errors():
            result = app.generate(prompt, num_images, seed)
        return result.files, result.summary

    @gpu
    def interpolate(prompt_a: str, prompt_b: str, num_steps: int, seed: int) -> tuple[list[str], str, str, str]:
        """Interpolate between two descriptions with the noise held fixed (GAN-INT).

        Args:
            prompt_a: the description at the start of the strip.
            prompt_b: the description at the end of the strip.
            num_steps: number of images in the strip, 2 to 16.
            seed: seed of the noise shared by every image, 0 to 4294967295.

        Returns:
            The images, the strip as one PNG, the strip as an animated GIF, and a Markdown summary.
        """
        with user_errors():
            result = app.interpolate(prompt_a, prompt_b, num_steps, seed)
        return result.files, *result.strip_files, result.summary

    @gpu
    def interpolate_noise(prompt: str, seed_a: int, seed_b: int, num_steps: int) -> tuple[list[str], str, str, str]:
        """Interpolate between the noise of two seeds with the description held fixed.

        Args:
            prompt: the description shared by every image.
            seed_a: seed of the noise at the start of the strip, 0 to 4294967295.
            seed_b: seed of the noise at the end of the strip, 0 to 4294967295.
            num_steps: number of images in the strip, 2 to 16.

        Returns:
            The images, the strip as one PNG, the strip as an animated GIF, and a Markdown summary.
        """
        with user_errors():
            result = app.interpolate_noise(prompt, seed_a, seed_b, num_steps)
        return result.files, *result.strip_files, result.summary

    def upscaled_view(images: list | None, show: bool) -> gr.Gallery:
        """The upscaled copies of the gallery's images, shown only when asked for."""
        return gr.Gallery(value=upscale([image for image, _ in images]) if show and images else None, visible=show)

    def seed_box(label: str, value: int = 0) -> gr.Number:
        """A whole-number seed field."""
        return gr.Number(value=value, precision=0, label=label, scale=3)

    # preprocess=False on the model events: the handlers receive the raw values, so every bad input (including ones
    # the widgets cannot produce but an API client can send) gets the app's own message, not a widget's generic one.
    interpolation = dict(preprocess=False, concurrency_limit=INTERPOLATE_CONCURRENCY)
    serve_in_place(app.output_folder)
    keep_cache = (KEEP_OUTPUTS_SECONDS, KEEP_OUTPUTS_SECONDS)
    with gr.Blocks(title="t2i: text to flower images", delete_cache=keep_cache) as demo:
        gr.Markdown(
            "# t2i: text to flower images\n"
            "A GAN-CLS generator (Reed et al., *Generative Adversarial Text to Image Synthesis*, ICML 2016) "
            "turns a description into 64×64 images in one forward pass."
        )
        gr.Markdown(app.model.description(), elem_id="model-info")

        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Describe a flower", value=examples[0], lines=2, max_lines=4)
                    gr.Examples([[p] for p in examples], inputs=[prompt], label="Examples")
                with gr.Column(scale=2):
                    num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, precision=0, label="Number of images")
                    with gr.Row(equal_height=True):
                        seed = seed_box("Seed")
                        randomise = gr.Button("Randomise", scale=1)
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            summary = gr.Markdown(label="Summary", elem_id="generate-summary", **SUMMARY)
            gr.Markdown("Select an image to download it as a PNG at the model's native size.")
            gallery = gr.Gallery(
                label="Images", columns=8, height="auto", type="pil", buttons=["download", "download_all", "fullscreen"],
                interactive=False, elem_id="generate-gallery", elem_classes="model-output",
            )
            show_upscaled = gr.Checkbox(label="Also show an upscaled view (for viewing only)", value=False)
            upscaled = gr.Gallery(
                label="Upscaled view: Lanczos-resized copies of the images above, NOT model output",
                format="png", columns=4, height="auto", visible=False, buttons=["fullscreen"],
                elem_id="upscaled-gallery",
            )

        with gr.Tab("Interpolate"):
            with gr.Tab("Two prompts, noise fixed"):
                prompt_a = gr.Textbox(label="Prompt A (start)", value=examples[0], lines=1)
                prompt_b = gr.Textbox(label="Prompt B (end)", value=examples[1], lines=1)
                gr.Examples([[a, b] for a, b in zip(examples[0::2], examples[1::2])], inputs=[prompt_a, prompt_b])
                with gr.Row():
                    steps_text = gr.Slider(MIN_STEPS, MAX_STEPS, value=8, step=1, precision=0, label="Steps", scale=3)
                    seed_text = seed_box("Seed (the fixed noise)")
                interpolate_button = gr.Button("Interpolate prompts", variant="primary", elem_id="interpolate-button")
            with gr.Tab("One prompt, two seeds"):
                prompt_noise = gr.Textbox(label="Prompt", value=examples[0], lines=1)
                with gr.Row():
                    seed_a, seed_b = seed_box("Seed A (start)", 0), seed_box("Seed B (end)", 1)
                    steps_noise = gr.Slider(MIN_STEPS, MAX_STEPS, value=8, step=1, precision=0, label="Steps", scale=3)
                interpolate_noise_button = gr.Button(
                    "Interpolate noise", variant="primary", elem_id="interpolate-noise-button"
                )
            strip_summary = gr.Markdown(label="Summary", elem_id="interpolate-summary", **SUMMARY)
            strip = gr.Gallery(
                label="Strip", columns=8, height="auto", interactive=False,
                elem_id="strip-gallery", elem_classes="model-output",
            )
            with gr.Row():
                strip_png, strip_gif = gr.File(label="Strip PNG"), gr.File(label="Strip GIF")

        # Each request first clears the previous result, so an error is never shown under an older summary.
        clear = dict(fn=lambda: (None, ""), inputs=None, queue=False, api_visibility="private")
        gr.on([generate_button.click, prompt.submit], outputs=[gallery, summary], **clear).then(
            generate, [prompt, num_images, seed], [gallery, summary],
            api_name="generate", preprocess=False, concurrency_limit=GENERATE_CONCURRENCY,
        )
        strip_outputs = [strip, strip_png, strip_gif, strip_summary]
        interpolate_button.click(outputs=[strip, strip_summary], **clear).then(
            interpolate, [prompt_a, prompt_b, steps_text, seed_text], strip_outputs,
            api_name="interpolate", **interpolation,
        )
        interpolate_noise_button.click(outputs=[strip, strip_summary], **clear).then(
            interpolate_noise, [prompt_noise, seed_a, seed_b, steps_noise], strip_outputs,
            api_name="interpolate_noise", **interpolation,
        )
        # UI-only helpers: no API endpoint, and the random seed is drawn in the browser.
        randomise.click(None, None, seed, js=RANDOM_SEED_JS, api_visibility="private")
        gr.on(
            [gallery.change, show_upscaled.change], upscaled_view, [gallery, show_upscaled], upscaled,
            api_visibility="private", queue=False,
        )
    return demo.queue(max_size=256)


def configure_cpu_threads() -> None:
    """On CPU, leave a core to the server (``serving_threads``) unless OMP_NUM_THREADS says how many to use."""
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(serving_threads())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--model`` defaults to env ``T2I_MODEL``, host and port to Gradio's own defaults."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=os.environ.get("T2I_MODEL"), help="Hub repo id or local folder of a saved GanClsPipeline"
    )
    parser.add_argument("--host", default=None, help="interface (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, **launch_kwargs) -> gr.Blocks:
    """Build and launch the app; ``launch_kwargs`` go to ``Blocks.launch`` (tests pass ``prevent_thread_lock``)."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:  # one line per refused input, in the server's console
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_cpu_threads()
    demo = create_app(args.model)
    # What is loaded by now (PyTorch, Gradio, the model: ~570k objects) lives as long as the process. Left to the
    # cyclic collector, every full collection walks all of it with the GIL held, ~350 ms that stall every request in
    # flight (about once per 300 requests under load). Frozen, full collections walk only what requests create.
    gc.collect()
    gc.freeze()
    demo.launch(server_name=args.host, server_port=args.port, css=CSS, **launch_kwargs)
    return demo


def _stop(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # docker stop and systemd stop with SIGTERM: stopping as on Ctrl-C lets Gradio close and the exit handlers delete
    # the app's output folder, which a plain SIGTERM would leave behind.
    signal.signal(signal.SIGTERM, _stop)
    main()
