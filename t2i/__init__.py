"""t2i: GAN-CLS / GAN-INT-CLS text-to-image GANs (Reed et al., ICML 2016), the Hugging Face way."""

from .hub import CheckpointError, ModelCardInfo
from .models import GanClsDiscriminator, GanClsGenerator
from .pipeline import GanClsPipeline
from .text_encoders import CharCnnRnnConfig, CharCnnRnnEncoder, CharTokenizer, TextEncoder, encode_text

__version__ = "0.1.0"

__all__ = [
    "CharCnnRnnConfig",
    "CharCnnRnnEncoder",
    "CharTokenizer",
    "CheckpointError",
    "GanClsDiscriminator",
    "GanClsGenerator",
    "GanClsPipeline",
    "ModelCardInfo",
    "TextEncoder",
    "encode_text",
]
