"""Everything app.py needs besides the UI: loading a model with a fallback, checking user input, producing results.

Nothing here imports gradio, so the logic is testable on its own and the app stays a thin layer of widgets. User
mistakes raise ``InputError`` with a message written for the user; app.py turns it into ``gr.Error``.

    loading   which model is served (trained, else an untrained stand-in) and the CPU threads it may use
    inputs    input checks: numbers in range, prompts cleaned to what the model reads
    batching  concurrent generations share one forward pass
    outputs   results: images, their files in expiring per-request folders, strips, GIFs, summaries
    service   ``App``, the model behind the UI and its three actions
"""

from .inputs import (
    MAX_IMAGES, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, MIN_STEPS, InputError, check_int, clean_prompt, prompt_limit,
)
from .loading import (
    DEFAULT_MODEL_FOLDER,
    EXAMPLE_PROMPTS,
    HEADER_METRICS,
    TINY_TEXT_ENCODER_CONFIG,
    LoadedModel,
    build_random_pipeline,
    load_model,
    read_model_card,
    serving_threads,
)
from .outputs import KEEP_OUTPUTS_SECONDS, UPSCALE_SIZE, OutputFolders, Result, make_strip, upscale
from .service import App

__all__ = [
    "DEFAULT_MODEL_FOLDER",
    "EXAMPLE_PROMPTS",
    "HEADER_METRICS",
    "KEEP_OUTPUTS_SECONDS",
    "MAX_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MAX_STEPS",
    "MIN_STEPS",
    "TINY_TEXT_ENCODER_CONFIG",
    "UPSCALE_SIZE",
    "App",
    "InputError",
    "LoadedModel",
    "OutputFolders",
    "Result",
    "build_random_pipeline",
    "check_int",
    "clean_prompt",
    "load_model",
    "make_strip",
    "prompt_limit",
    "read_model_card",
    "serving_threads",
    "upscale",
]
