"""GAN-CLS training: the step with its explicit objective, EMA, and atomic checkpoints (used by train_accelerate.py)."""

from .checkpoints import (
    CHECKPOINT_PATTERN, EXPORT_DTYPES, check_resumable, export_checkpoint, generator_config, grow_checkpoint, list_checkpoints, load_checkpoint, publish_folder,
    save_checkpoint,
)
from .gan_cls import GanClsObjective, non_finite, train_step, update_ema

__all__ = [
    "CHECKPOINT_PATTERN", "EXPORT_DTYPES", "GanClsObjective", "check_resumable", "export_checkpoint", "generator_config", "grow_checkpoint", "list_checkpoints", "load_checkpoint", "publish_folder", "save_checkpoint",
    "non_finite", "train_step", "update_ema",
]
