"""Captioned-image data: loading, building (synthetic flowers, Oxford-102), training transforms, embedding cache."""

from .embedding_cache import CaptionEmbeddings, captions_fingerprint, encode_captions, load_or_build_caption_embeddings
from .loading import (
    captioned_features,
    load_captioned_dataset,
    normalize_captioned_dataset,
    push_dataset_folder,
    save_captioned_dataset,
)
from .oxford import OXFORD_102_CLASS_NAMES, BuildReport, build_oxford_dataset, read_oxford_raw
from .synthetic import (
    ATTRIBUTE_VALUES,
    CLASS_NAMES,
    SPECIES,
    TEST_CLASSES,
    TRAIN_CLASSES,
    caption_attributes,
    generate_synthetic_dataset,
)
from .transforms import (
    CaptionedImageDataset,
    TensorBatchLoader,
    augment_batch,
    images_to_uint8,
    load_size_for,
    resize_center_crop,
    sample_mismatched_indices,
)

__all__ = [
    "ATTRIBUTE_VALUES", "CLASS_NAMES", "OXFORD_102_CLASS_NAMES", "SPECIES", "TEST_CLASSES", "TRAIN_CLASSES",
    "BuildReport", "CaptionEmbeddings", "CaptionedImageDataset", "TensorBatchLoader",
    "augment_batch", "build_oxford_dataset", "caption_attributes", "captioned_features", "captions_fingerprint",
    "encode_captions", "generate_synthetic_dataset", "images_to_uint8", "load_captioned_dataset",
    "load_or_build_caption_embeddings", "load_size_for", "normalize_captioned_dataset", "push_dataset_folder",
    "read_oxford_raw", "resize_center_crop", "sample_mismatched_indices", "save_captioned_dataset",
]
