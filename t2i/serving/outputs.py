"""What a request gets back: images, the files served for them (PNGs with their prompt and seed, strips, GIFs) in a
folder per request that expires, and the summary the UI shows next to them."""

from __future__ import annotations

import collections
import html
import json
import re
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

UPSCALE_SIZE = 256
KEEP_OUTPUTS_SECONDS = 3600  # how long a request's images stay downloadable


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


class OutputFolders:
    """A temporary folder (``root``) holding a folder per request; each is deleted once older than ``keep_seconds``.

    The UI serves ``root`` directly (see app.py). It is removed with this object.
    """

    def __init__(self, keep_seconds: float = KEEP_OUTPUTS_SECONDS):
        self.root = Path(tempfile.mkdtemp(prefix="t2i-app-"))
        weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)
        self._folders: collections.deque[tuple[float, Path]] = collections.deque()
        self._folders_lock = threading.Lock()
        self._keep_seconds = keep_seconds

    def new_folder(self) -> Path:
        """A fresh folder for one request; the expired ones go as it is made."""
        folder = Path(tempfile.mkdtemp(dir=self.root))
        now = time.monotonic()
        expired = []
        with self._folders_lock:
            self._folders.append((now, folder))
            while now - self._folders[0][0] > self._keep_seconds:
                expired.append(self._folders.popleft()[1])
        for old in expired:
            shutil.rmtree(old, ignore_errors=True)
        return folder


def png_info(model_name: str, metadata: dict) -> PngInfo:
    """PNG metadata: a ``t2i`` text chunk with the model's name and ``metadata`` as JSON."""
    info = PngInfo()
    info.add_text("t2i", json.dumps({"model": model_name, **metadata}, ensure_ascii=False))
    return info


def save_images(folder: Path, images: list[Image.Image], stem: str, metadata: dict, model_name: str) -> list[str]:
    """Write PNGs into ``folder`` (a fresh one for this request), to be served from there.

    Returning files instead of PIL images gives downloads a meaningful name and the prompt in their metadata,
    and avoids a Gradio race: it writes PIL outputs in place under their content hash, so two identical
    requests at once would overwrite a file while it is being served.
    """
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"t2i-{stem}-{i + 1:02d}.png"))
        image.save(paths[-1], pnginfo=png_info(model_name, {**metadata, "index": i}))
    return paths


def save_strip(folder: Path, images: list[Image.Image], stem: str, metadata: dict, model_name: str) -> list[str]:
    """Write an interpolation into ``folder`` as one strip PNG and as a GIF; their paths, in that order."""
    make_strip(images).save(folder / f"t2i-{stem}-strip.png", pnginfo=png_info(model_name, metadata))
    # Ping-pong loop, so the animation runs back and forth without a jump.
    frames = images + images[-2:0:-1]
    frames[0].save(folder / f"t2i-{stem}.gif", save_all=True, append_images=frames[1:], duration=150, loop=0)
    return [str(folder / f"t2i-{stem}-strip.png"), str(folder / f"t2i-{stem}.gif")]


# What can turn text into markup mid-line: emphasis, code, links and images, strikethrough, maths, e-mail links
# (@), HTML's & < > (made entities first), and GFM's bare links ("http://", "www."). Other punctuation stays as it is,
# so API clients read plain text.
_MARKDOWN_MARKUP = re.compile(r"([\\`*_\[\]~$@])|(?<=\bhttps)(:)|(?<=\bhttp)(:)|(?<=\bftp)(:)|(?<=\bwww)(\.)", re.I)


def escape_markdown(text: str) -> str:
    """``text`` as Markdown that shows it literally: a prompt's ``**``, ``[link](...)``, ``<img ...>``, ``$$`` or
    ``http://...`` is shown as typed, never rendered. ``text`` is one line (prompts are; see ``clean_prompt``)."""
    return _MARKDOWN_MARKUP.sub(lambda match: "\\" + match.group(0), html.escape(text, quote=False))


def summarize(what: str, images: list[Image.Image], notices: list[str], model_warning: str | None = None) -> str:
    """Markdown for the UI: ``what`` was made (Markdown, with any user text already escaped), the images' size, a line
    per notice (plain text, escaped here: it quotes the prompt) and ``model_warning`` (Markdown) when the model
    is not the one asked for."""
    size = f"{images[0].width}×{images[0].height} px each (the model's native size)"
    lines = [f"{what}; {size}.", *[f"- ⚠️ {escape_markdown(notice)}" for notice in notices]]
    return "\n".join(lines + ([f"- ⚠️ {model_warning}"] if model_warning else []))
