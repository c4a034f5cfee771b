"""Oxford-102 builder on a small fixture laid out like the raw downloads, with each kind of bad data."""

import io
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from t2i.datasets.__main__ import main
from t2i.datasets.oxford import (
    CORRUPT, DUPLICATE, NO_CAPTION_FILE, NO_CAPTIONS, NO_IMAGE, NO_SPLIT, OXFORD_102_CLASS_NAMES,
    build_oxford_dataset, read_oxford_raw,
)


def _jpeg(mode: str = "RGB", seed: int = 0, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


# image number -> (class, caption file text or None, image bytes or None)
FIXTURE = {
    1: (1, "a pink flower\nfive petals\n", _jpeg(seed=1)),
    2: (1, "a flower with round petals\n", _jpeg(seed=2)),
    3: (2, "a grey flower\n", _jpeg("L", seed=3)),                  # grayscale: converted
    4: (2, "a cmyk flower\n", _jpeg("CMYK", seed=4)),               # CMYK: converted
    5: (3, "a flower with alpha\n", _jpeg("RGBA", 5, "PNG")),       # RGBA (a PNG named .jpg): converted
    6: (3, "a test flower\n", _jpeg(seed=6)),
    7: (1, "corrupt\n", b"not an image at all"),                    # corrupt
    8: (2, "truncated\n", _jpeg(seed=8)[:600]),                     # truncated
    9: (1, None, _jpeg(seed=9)),                                    # image without caption file
    10: (1, "no image\n", None),                                    # caption file without image
    11: (2, "\n  \n", _jpeg(seed=11)),                              # only empty captions
    13: (2, "first\n\nsecond\n   \n", _jpeg(seed=13)),              # two empty lines among captions
    14: (4, "a class in no split\n", _jpeg(seed=14)),
}
DUPLICATE_NUMBER = 12


def make_raw_layout(root: Path) -> tuple[Path, Path]:
    images, captions = root / "102flowers", root / "cvpr2016_flowers"
    (images / "jpg").mkdir(parents=True)
    for number, (label, text, data) in FIXTURE.items():
        name = f"image_{number:05d}"
        if data is not None:
            (images / "jpg" / f"{name}.jpg").write_bytes(data)
        if text is not None:
            folder = captions / "text_c10" / f"class_{label:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.txt").write_text(text)
    (images / "jpg" / "extra").mkdir()
    for folder in (images / "jpg", images / "jpg" / "extra"):  # the same file name twice
        (folder / f"image_{DUPLICATE_NUMBER:05d}.jpg").write_bytes(_jpeg(seed=12))
    (captions / "text_c10" / "class_00001" / f"image_{DUPLICATE_NUMBER:05d}.txt").write_text("duplicated\n")
    (captions / "trainvalclasses.txt").write_text("class_00001\nclass_00002\n")
    (captions / "testclasses.txt").write_text("class_00003\n")
    return images, captions


def _tgz(folder: Path, out: Path, top: str) -> Path:
    with tarfile.open(out, "w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, arcname=f"{top}{path.relative_to(folder).as_posix()}", recursive=False)
    return out


@pytest.fixture
def raw(tmp_path):
    return make_raw_layout(tmp_path / "raw")


def test_builds_reed_split_and_reports_every_bad_file(raw, tmp_path):
    with pytest.warns(UserWarning) as caught:
        report = build_oxford_dataset(*raw, tmp_path / "out")
    assert report.kept == {"train": 5, "test": 2}
    assert {reason: sorted(Path(p).name for p in paths) for reason, paths in report.skipped.items()} == {
        CORRUPT: ["image_00007.jpg", "image_00008.jpg"],
        NO_CAPTION_FILE: ["image_00009.jpg"],
        NO_IMAGE: ["image_00010.txt"],
        NO_CAPTIONS: ["image_00011.txt"],
        DUPLICATE: ["image_00012.jpg", "image_00012.jpg", "image_00012.txt"],
        NO_SPLIT: ["image_00014.txt"],
    }
    assert {mode: [Path(p).name for p in paths] for mode, paths in report.converted.items()} == {
        "L": ["image_00003.jpg"], "CMYK": ["image_00004.jpg"], "RGBA": ["image_00005.jpg"],
    }
    assert report.empty_captions_removed == 4  # two in image_00011, two in image_00013
    warned = "\n".join(str(w.message) for w in caught)
    for reason in report.skipped:
        assert reason in warned
    assert "image_00007.jpg" in report.summary() and "kept 5 images in train" in report.summary()

    built = datasets.load_dataset(str(tmp_path / "out"))
    assert built["train"]["file_name"] == [f"image_{n:05d}.jpg" for n in (1, 2, 3, 4, 13)]
    assert built["test"]["file_name"] == ["image_00005.jpg", "image_00006.jpg"]
    assert built["train"]["label"] == [0, 0, 1, 1, 1] and built["test"]["class_name"] == ["canterbury bells"] * 2
    assert built["train"][0]["captions"] == ["a pink flower", "five petals"]
    assert built["train"][4]["captions"] == ["first", "second"]
    assert all(row["image"].mode == "RGB" for split in built.values() for row in split)
    assert built["train"][0]["image"].size == (48, 40)
    assert (raw[0] / "jpg" / "image_00001.jpg").read_bytes() == _embedded_bytes(built["train"], 0)  # RGB kept as is
    assert "Build report" in (tmp_path / "out" / "README.md").read_text()


def _embedded_bytes(split: datasets.Dataset, index: int) -> bytes:
    return split.cast_column("image", datasets.Image(decode=False))[index]["image"]["bytes"]


def test_archives_give_the_same_rows(raw, tmp_path):
    images = _tgz(raw[0], tmp_path / "102flowers.tgz", "")  # jpg/image_00001.jpg, as distributed
    captions = _tgz(raw[1], tmp_path / "cvpr2016_flowers.tar.gz", "cvpr2016_flowers/")
    from_archives, archive_report = read_oxford_raw(images, captions)
    from_folders, folder_report = read_oxford_raw(*raw)
    assert from_archives == from_folders
    assert archive_report.kept == folder_report.kept


def test_class_names_ship_with_the_package():
    assert len(OXFORD_102_CLASS_NAMES) == len(set(OXFORD_102_CLASS_NAMES)) == 102
    assert OXFORD_102_CLASS_NAMES[0] == "pink primrose" and OXFORD_102_CLASS_NAMES[-1] == "blackberry lily"


def test_missing_split_file_is_refused(raw, tmp_path):
    (raw[1] / "testclasses.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testclasses.txt"):
        read_oxford_raw(*raw)


def test_class_in_both_splits_is_refused(raw):
    (raw[1] / "testclasses.txt").write_text("class_00003\nclass_00001\n")
    with pytest.raises(ValueError, match="class_00001"):
        read_oxford_raw(*raw)


def test_malformed_split_file_is_refused(raw):
    (raw[1] / "testclasses.txt").write_text("class_00003\nroses\n")
    with pytest.raises(ValueError, match=r"testclasses.txt, line 2"):
        read_oxford_raw(*raw)


def test_cli_prints_the_report(raw, tmp_path, capsys):
    with pytest.warns(UserWarning):
        main(["oxford", "--images", str(raw[0]), "--captions", str(raw[1]), "--out", str(tmp_path / "cli")])
    printed = capsys.readouterr().out
    assert "kept 5 images in train" in printed and CORRUPT in printed
    assert (tmp_path / "cli" / "data" / "train-00000-of-00001.parquet").exists()


# ----------------------------------------------------------------------------------------------------------------
# Caption encodings and image modes (Hardening, items 6 and 7)

CAPTION_ENCODINGS = {
    "utf-8": "a café-coloured flower".encode("utf-8"),
    "utf-8 with BOM": b"\xef\xbb\xbf" + "a café-coloured flower".encode("utf-8"),
    "utf-16 with BOM": "a café-coloured flower".encode("utf-16"),
    "latin-1 / cp1252": "a café-coloured flower".encode("latin-1"),
}


@pytest.mark.parametrize("kind", sorted(CAPTION_ENCODINGS))
def test_caption_files_in_any_encoding_reach_the_dataset_as_written(kind, tmp_path):
    images, captions = make_raw_layout(tmp_path)
    (captions / "text_c10" / "class_00001" / "image_00001.txt").write_bytes(CAPTION_ENCODINGS[kind])
    splits, report = read_oxford_raw(images, captions)
    row = next(r for r in splits["train"] if r["file_name"] == "image_00001.jpg")
    assert row["captions"] == ["a café-coloured flower"]
    assert not any("\ufffd" in c for rows in splits.values() for r in rows for c in r["captions"])
    recoded = {encoding: len(names) for encoding, names in report.recoded.items()}
    expected = {"utf-8": {}, "utf-8 with BOM": {}, "utf-16 with BOM": {"utf-16-le": 1}, "latin-1 / cp1252": {"cp1252": 1}}[kind]
    assert recoded == expected
    if expected:
        assert "not UTF-8" in report.summary() or "as cp1252" in report.summary()


def test_invisible_and_replacement_characters_are_removed_and_counted(tmp_path):
    images, captions = make_raw_layout(tmp_path)
    (captions / "text_c10" / "class_00001" / "image_00002.txt").write_text("a red\u200b flower\ufffd\u202e\n", encoding="utf-8")
    splits, report = read_oxford_raw(images, captions)
    row = next(r for r in splits["train"] if r["file_name"] == "image_00002.jpg")
    assert row["captions"] == ["a red flower"]
    assert set(report.characters_removed) == {"replacement characters (U+FFFD)", "invisible formatting characters"}
    assert "removed invisible formatting characters from 1 caption file(s)" in report.summary()


def _mode_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image in `mode` and the 8-bit RGB values a faithful conversion gives."""
    gray = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    if mode == "I;16":
        return Image.fromarray((gray.astype(np.uint16) * 257)), np.repeat(gray[..., None], 3, axis=2)
    if mode == "I":
        return Image.fromarray(gray.astype(np.int32) * 257, "I"), np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32) / 255, "F"), np.repeat(gray[..., None], 3, axis=2)
    rgb = np.array([[[200, 30, 40], [20, 180, 60]], [[10, 20, 220], [250, 250, 250]]], dtype=np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode in ("1", "L"):
        image = image.convert(mode)
        return image, np.asarray(image.convert("RGB"))
    if mode == "P":
        image = image.quantize(colors=4)
        return image, rgb
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        base = {"RGBA": "RGBA", "RGBa": "RGBA", "LA": "LA", "La": "LA", "PA": "RGBA"}[mode]
        opaque = image.convert(base)
        if mode in ("RGBa", "La"):
            return opaque.convert(mode), np.asarray(opaque.convert("RGB"))  # fully opaque: premultiplying changes nothing
        if mode == "PA":
            return image.quantize(colors=4).convert("PA"), rgb
        return opaque, np.asarray(opaque.convert("RGB"))
    converted = image.convert(mode)  # CMYK, YCbCr, LAB, HSV, RGBX: a round trip through the mode
    return converted, np.asarray(converted.convert("RGB"))


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "I;16", "I", "F"])
def test_every_pillow_mode_becomes_faithful_8_bit_rgb(mode):
    from t2i.data.transforms import to_rgb8

    image, expected = _mode_image(mode)
    assert image.mode == mode
    converted = to_rgb8(image)
    assert converted.mode == "RGB"
    np.testing.assert_allclose(np.asarray(converted, dtype=int), expected.astype(int), atol=3)


def test_images_without_a_faithful_mapping_are_refused_with_a_reason():
    from t2i.data.transforms import UnsupportedImageError, to_rgb8

    with pytest.raises(UnsupportedImageError, match="values up to 1e\\+06"):
        to_rgb8(Image.fromarray(np.full((2, 2), 1e6, dtype=np.float32), "F"))
    with pytest.raises(UnsupportedImageError, match="no faithful 8-bit mapping"):
        to_rgb8(Image.fromarray(np.full((2, 2), -5, dtype=np.int32), "I"))


def test_16_bit_images_keep_their_values_in_the_builder_and_the_transforms(tmp_path):
    from t2i.data.transforms import pil_to_uint8, resize_center_crop
    from t2i.datasets.oxford import checked_rgb_image

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)  # 0 .. 64512: all above 255 but the first
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    data, mode = checked_rgb_image(buffer.getvalue())
    assert mode.startswith("I")
    built = np.asarray(Image.open(io.BytesIO(data)), dtype=int)[..., 0]
    np.testing.assert_allclose(built, ramp / 257, atol=4)  # JPEG q95 of a smooth ramp: a few levels
    assert built.max() < 255 and built.min() < 10  # Pillow's own conversion would make all but one pixel white
    tensor = pil_to_uint8(resize_center_crop(Image.open(io.BytesIO(buffer.getvalue())), 8))
    np.testing.assert_allclose(tensor[0].numpy().astype(int), np.round(ramp / 257), atol=2)


def test_utf16_without_a_bom_and_odd_16_bit_images():
    from t2i.data.transforms import to_rgb8
    from t2i.datasets.oxford import decode_caption_file

    assert decode_caption_file("“curly” — quotes".encode("utf-16-le"))[:2] == ("“curly” — quotes", "utf-16-le")
    assert decode_caption_file("a red flower".encode("utf-16-be"))[:2] == ("a red flower", "utf-16-be")
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 65535, 4096).reshape(64, 64).astype(np.uint16)).save(buffer, "PNG", transparency=0)
    converted = np.asarray(to_rgb8(Image.open(io.BytesIO(buffer.getvalue()))))
    assert (converted == 255).mean() < 0.01 and abs(int(converted[32, 32, 0]) - 128) <= 2  # scaled; only the transparent pixel white
    buffer = io.BytesIO()
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)
    Image.fromarray(rgb).save(buffer, "PNG", transparency=(0, 0, 0))
    converted = np.asarray(to_rgb8(Image.open(io.BytesIO(buffer.getvalue()))))
    assert tuple(converted[0, 0]) == (10, 20, 30) and tuple(converted[1, 1]) == (255, 255, 255)  # RGB tRNS: on white
