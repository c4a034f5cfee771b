"""The runtime data path for captioned images: loading, training transforms, embedding cache.

The dataset builders (synthetic flowers, Oxford-102) are in `t2i.datasets`.
"""

from .counterfactual import caption_bigrams, counterfactual_caption, counterfactual_captions, exchange_colors, swap_stated_word
from .fragments import caption_fragment, caption_fragments
from .embedding_cache import CaptionEmbeddings, captions_fingerprint, encode_captions, load_or_build_caption_embeddings
from .loading import (
    captioned_features,
    load_captioned_dataset,
    normalize_captioned_dataset,
    push_dataset_folder,
    save_captioned_dataset,
)
from .transforms import (
    TensorBatchLoader,
    augment_batch,
    images_to_uint8,
    load_size_for,
    resize_center_crop,
    sample_mismatched_indices,
)

__all__ = [
    "CaptionEmbeddings", "TensorBatchLoader",
    "augment_batch", "caption_fragment", "caption_fragments", "caption_bigrams", "captioned_features", "captions_fingerprint", "counterfactual_caption", "counterfactual_captions", "exchange_colors",
    "encode_captions", "images_to_uint8", "load_captioned_dataset",
    "load_or_build_caption_embeddings", "load_size_for", "normalize_captioned_dataset", "push_dataset_folder",
    "resize_center_crop", "sample_mismatched_indices", "save_captioned_dataset", "swap_stated_word",
]
