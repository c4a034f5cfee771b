"""Dataset builders: the synthetic captioned flowers and Oxford-102 with Reed's captions (`python -m t2i.datasets`).

The builders write the captioned-image schema that `t2i.data` (the runtime data path) loads; they depend on
`t2i.data`, never the other way round.
"""

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

__all__ = [
    "ATTRIBUTE_VALUES", "CLASS_NAMES", "OXFORD_102_CLASS_NAMES", "SPECIES", "TEST_CLASSES", "TRAIN_CLASSES",
    "BuildReport", "build_oxford_dataset", "caption_attributes", "generate_synthetic_dataset", "read_oxford_raw",
]
