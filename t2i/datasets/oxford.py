"""Oxford-102 flowers with the captions of Reed et al. (CVPR 2016), built from the raw downloads.

Inputs, as distributed (each a folder or an archive: .tgz / .tar.gz / .tar / .zip):
- images: `102flowers.tgz`, holding `jpg/image_NNNNN.jpg`;
- captions: Reed's `cvpr2016_flowers`, holding `text_c10/class_XXXXX/image_NNNNN.txt` (one caption per line),
  `trainvalclasses.txt` and `testclasses.txt`.

The output follows DESIGN.md's schema with Reed's zero-shot split: `train` = the 82 train+val classes,
`test` = the 20 test classes.

    python -m t2i.datasets oxford --images 102flowers.tgz --captions cvpr2016_flowers.tar.gz --out oxford-102-captions

Bad input is never dropped silently: each skipped or converted file is counted in a warning and in the
printed report, and inconsistent split files are refused with an error naming the file.
"""

from __future__ import annotations

import codecs
import io
import re
import tarfile
import unicodedata
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile

from ..data.loading import captioned_features, save_captioned_dataset
from ..data.transforms import to_rgb8

# The standard names of the 102 classes, in label order (class_00001 is "pink primrose").
OXFORD_102_CLASS_NAMES: tuple[str, ...] = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon",
    "colt's foot", "king protea", "spear thistle", "yellow iris", "globe-flower", "purple coneflower",
    "peruvian lily", "balloon flower", "giant white arum lily", "fire lily", "pincushion flower",
    "fritillary", "red ginger", "grape hyacinth", "corn poppy", "prince of wales feathers",
    "stemless gentian", "artichoke", "sweet william", "carnation", "garden phlox", "love in the mist",
    "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort",
    "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion",
    "petunia", "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura",
    "geranium", "orange dahlia", "pink-yellow dahlia", "cautleya spicata", "japanese anemone",
    "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
    "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
    "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia", "cyclamen",
    "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper",
    "blackberry lily",
)

_IMAGE_FILE = re.compile(r"(?:^|/)(image_\d{5}\.jpg)$")
_CAPTION_FILE = re.compile(r"(?:^|/)class_(\d{5})/(image_\d{5})\.txt$")
_SPLIT_FILE = re.compile(r"(?:^|/)(trainval|test)classes\.txt$")

CORRUPT = "corrupt or truncated image"
NO_CAPTION_FILE = "image without a caption file"
NO_CAPTIONS = "caption file with no non-empty caption"
NO_IMAGE = "caption file without an image"
DUPLICATE = "duplicate file name"
NO_SPLIT = "class in neither trainvalclasses.txt nor testclasses.txt"


@dataclass
class BuildReport:
    """What the builder kept, skipped (reason -> file names) and converted (original mode -> file names)."""

    kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    converted: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    empty_captions_removed: int = 0
    recoded: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # encoding -> caption files
    characters_removed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # kind -> caption files

    def summary(self) -> str:
        """Human-readable account of every row kept, skipped or changed."""
        lines = [f"kept {n} images in {split}" for split, n in self.kept.items()]
        lines += [f"skipped {len(names)}: {reason}: {_examples(names)}" for reason, names in self.skipped.items()]
        lines += [f"converted {len(names)} from {mode} to RGB: {_examples(names)}" for mode, names in self.converted.items()]
        if self.empty_captions_removed:
            lines.append(f"removed {self.empty_captions_removed} empty caption lines")
        lines += [f"read {len(names)} caption file(s) as {encoding} (not UTF-8): {_examples(names)}" for encoding, names in self.recoded.items()]
        lines += [f"removed {kind} from {len(names)} caption file(s): {_examples(names)}" for kind, names in self.characters_removed.items()]
        return "\n".join(lines)

    def warn(self) -> None:
        """One warning per kind of problem, with its count."""
        for reason, names in self.skipped.items():
            warnings.warn(f"skipped {len(names)} file(s), {reason}: {_examples(names)}", stacklevel=3)
        for mode, names in self.converted.items():
            warnings.warn(f"converted {len(names)} {mode} image(s) to RGB: {_examples(names)}", stacklevel=3)
        if self.empty_captions_removed:
            warnings.warn(f"removed {self.empty_captions_removed} empty caption line(s)", stacklevel=3)
        for encoding, names in self.recoded.items():
            warnings.warn(f"read {len(names)} caption file(s) as {encoding}, not UTF-8: {_examples(names)}", stacklevel=3)
        for kind, names in self.characters_removed.items():
            warnings.warn(f"removed {kind} from {len(names)} caption file(s): {_examples(names)}", stacklevel=3)


def _examples(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def iter_source_files(source: str | Path, pattern: re.Pattern) -> Iterator[tuple[str, bytes]]:
    """(path inside `source`, content) of each file whose path matches `pattern`, from a folder or archive."""
    source = Path(source)
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source).as_posix()
            if path.is_file() and pattern.search(relative):
                yield relative, path.read_bytes()
    elif source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source, "r:*") as archive:
            for member in archive:  # in archive order: one sequential pass over a .tgz
                if member.isfile() and pattern.search(member.name):
                    yield member.name, archive.extractfile(member).read()
    elif source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for name in sorted(archive.namelist()):
                if not name.endswith("/") and pattern.search(name):
                    yield name, archive.read(name)
    else:
        raise FileNotFoundError(f"{source}: not a folder or a .tgz/.tar/.zip archive")


@contextmanager
def _strict_image_loading() -> Iterator[None]:
    # Some libraries switch this on globally; truncated files must fail here, not be padded with grey.
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def checked_rgb_image(data: bytes) -> tuple[bytes, str | None] | None:
    """(bytes of an RGB image, original mode if it was converted) or None if the image does not decode.

    RGB files are kept byte for byte; every other mode goes through `to_rgb8` (the training transforms' own
    conversion: alpha composited on white, 16-bit values scaled) and is re-encoded as JPEG quality 95. An image
    whose values have no faithful 8-bit mapping counts as not decodable.
    """
    try:
        with _strict_image_loading(), Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode == "RGB":
                return data, None
            mode = image.mode
            buffer = io.BytesIO()
            to_rgb8(image).save(buffer, format="JPEG", quality=95)
            return buffer.getvalue(), mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # UnsupportedImageError is a ValueError
        return None


def decode_caption_file(raw: bytes) -> tuple[str, str | None, list[str]]:
    """The text a person wrote in a caption file: (text, the encoding if not UTF-8, the kinds of characters removed).

    A byte-order mark picks UTF-8 or UTF-16 (so does the zero byte in every other position of BOM-less UTF-16);
    otherwise strict UTF-8, then cp1252 (what Windows editors write for
    "café"), then Latin-1, which decodes any bytes. The text is NFC-normalised; replacement characters (U+FFFD, a
    sign of an earlier lossy conversion), invisible formatting characters (zero-width, bidi controls, BOMs) and
    control characters other than line breaks and tabs are removed and named, never kept silently.
    """
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if raw.startswith(bom):
            text, used = raw[len(bom):].decode(encoding, "replace"), (None if encoding == "utf-8" else encoding)
            break
    else:
        # UTF-16 without a byte-order mark: text in Latin script has a zero byte in every other position.
        zeros_odd, zeros_even = raw[1::2].count(0), raw[0::2].count(0)
        guesses = ["utf-16-le"] if len(raw) % 2 == 0 and zeros_odd > len(raw) // 4 > zeros_even else []
        guesses += ["utf-16-be"] if len(raw) % 2 == 0 and zeros_even > len(raw) // 4 > zeros_odd else []
        for encoding in (*guesses, "utf-8", "cp1252", "latin-1"):
            try:
                text, used = raw.decode(encoding), (None if encoding == "utf-8" else encoding)
                break
            except UnicodeDecodeError:
                continue
    text = unicodedata.normalize("NFC", text)
    removed = []
    for kind, unwanted in (("replacement characters (U+FFFD)", lambda ch: ch == "\ufffd"),
                           ("invisible formatting characters", lambda ch: unicodedata.category(ch) == "Cf"),
                           ("control characters", lambda ch: unicodedata.category(ch) == "Cc" and ch not in "\n\r\t")):
        if any(unwanted(ch) for ch in text):
            text = "".join(ch for ch in text if not unwanted(ch))
            removed.append(kind)
    return text, used, removed


def _read_split_file(path: str, data: bytes) -> set[int]:
    classes = set()
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"class_(\d{5})", line.strip())
        if not match or not 1 <= int(match.group(1)) <= len(OXFORD_102_CLASS_NAMES):
            raise ValueError(f"{path}, line {number}: expected class_00001 .. class_00102, got {line.strip()!r}")
        classes.add(int(match.group(1)))
    return classes


def read_oxford_raw(images: str | Path, captions: str | Path) -> tuple[dict[str, list[dict]], BuildReport]:
    """Rows of the `train` and `test` splits (sorted by file name) and a report of what was skipped."""
    report = BuildReport()
    image_bytes: dict[str, bytes] = {}
    image_paths: dict[str, list[str]] = defaultdict(list)
    for path, data in iter_source_files(images, _IMAGE_FILE):
        name = _IMAGE_FILE.search(path).group(1)
        image_paths[name].append(path)
        image_bytes[name] = data
    if not image_bytes:
        raise FileNotFoundError(f"{images}: no jpg/image_NNNNN.jpg files found")

    caption_files: dict[str, tuple[int, bytes]] = {}
    caption_paths: dict[str, list[str]] = defaultdict(list)
    split_classes: dict[str, set[int]] = {}
    split_pattern = re.compile(f"{_CAPTION_FILE.pattern}|{_SPLIT_FILE.pattern}")
    for path, data in iter_source_files(captions, split_pattern):
        if match := _SPLIT_FILE.search(path):
            split_classes[match.group(1)] = _read_split_file(path, data)
        else:
            match = _CAPTION_FILE.search(path)
            name = f"{match.group(2)}.jpg"
            caption_paths[name].append(path)
            caption_files[name] = (int(match.group(1)), data)
    if not caption_files:
        raise FileNotFoundError(f"{captions}: no text_c10/class_XXXXX/image_NNNNN.txt files found")
    for split in ("trainval", "test"):
        if split not in split_classes:
            raise FileNotFoundError(f"{captions}: {split}classes.txt not found")
    if overlap := split_classes["trainval"] & split_classes["test"]:
        raise ValueError(f"{captions}: class_{min(overlap):05d} is in both trainvalclasses.txt and testclasses.txt")

    # The same name twice is ambiguous (which image, which class?), so every copy is skipped.
    duplicates = {name for paths in (image_paths, caption_paths) for name, found in paths.items() if len(found) > 1}
    for name in sorted(duplicates):
        report.skipped[DUPLICATE].extend(image_paths.get(name, []) + caption_paths.get(name, []))

    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for name in sorted((image_bytes.keys() | caption_files.keys()) - duplicates):
        if name not in image_bytes:
            report.skipped[NO_IMAGE].append(caption_paths[name][0])
            continue
        if name not in caption_files:
            report.skipped[NO_CAPTION_FILE].append(image_paths[name][0])
            continue
        class_id, raw = caption_files[name]
        text, encoding, removed = decode_caption_file(raw)
        if encoding:
            report.recoded[encoding].append(caption_paths[name][0])
        for kind in removed:
            report.characters_removed[kind].append(caption_paths[name][0])
        lines = text.splitlines()
        texts = [line.strip() for line in lines if line.strip()]
        report.empty_captions_removed += len(lines) - len(texts)
        if not texts:
            report.skipped[NO_CAPTIONS].append(caption_paths[name][0])
            continue
        if class_id in split_classes["trainval"]:
            split = "train"
        elif class_id in split_classes["test"]:
            split = "test"
        else:
            report.skipped[NO_SPLIT].append(caption_paths[name][0])
            continue
        checked = checked_rgb_image(image_bytes[name])
        if checked is None:
            report.skipped[CORRUPT].append(image_paths[name][0])
            continue
        data, converted_from = checked
        if converted_from:
            report.converted[converted_from].append(image_paths[name][0])
        splits[split].append({
            "image": {"bytes": data, "path": name},
            "captions": texts,
            "label": class_id - 1,
            "class_name": OXFORD_102_CLASS_NAMES[class_id - 1],
            "file_name": name,
        })
    report.kept = {split: len(rows) for split, rows in splits.items()}
    report.skipped, report.converted = dict(report.skipped), dict(report.converted)
    report.recoded, report.characters_removed = dict(report.recoded), dict(report.characters_removed)
    return splits, report


def build_oxford_dataset(images: str | Path, captions: str | Path, out_dir: str | Path) -> BuildReport:
    """Read the raw files, warn about every skipped or converted file, and write the dataset to `out_dir`."""
    splits, report = read_oxford_raw(images, captions)
    report.warn()
    if not any(report.kept.values()):
        raise ValueError(f"no usable image/caption pairs in {images} and {captions}:\n{report.summary()}")
    card = _dataset_card(report)
    save_captioned_dataset(
        splits, out_dir, captioned_features(OXFORD_102_CLASS_NAMES), card,
        pretty_name="Oxford-102 flowers with Reed et al. captions", license="other",
        tags=["flowers", "oxford-102", "text-to-image"],
    )
    return report


def _dataset_card(report: BuildReport) -> str:
    return f"""# Oxford-102 flowers with the captions of Reed et al. (2016)

Images of the Oxford 102 Category Flower Dataset (Nilsback & Zisserman, 2008) with the 10 captions per
image collected by Reed, Akata, Lee & Schiele, "Learning Deep Representations of Fine-Grained Visual
Descriptions" (CVPR 2016), in the schema used by `t2i` (GAN-CLS / GAN-INT-CLS, Reed et al., ICML 2016).

Columns: `image`, `captions` (list of strings), `label` (class index, 0-based: class_00001 is 0),
`class_name`, `file_name`.

Split: Reed's zero-shot protocol; `train` holds the images of the 82 classes of `trainvalclasses.txt`,
`test` those of the 20 classes of `testclasses.txt`.

Licence: see the terms of the original image and caption datasets; this card only describes the
conversion.

## Build report

```
{report.summary()}
```
"""
