import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from t2i import GanClsGenerator, GanClsPipeline, TextEncoder
from t2i.text_encoders import REED_ALPHABET, CharTokenizer, build_char_cnn_rnn, encode_text, token_features

from conftest import TINY_TEXT_ENCODER_CONFIG

WORDS = "a the flower petals petal red blue yellow purple pink white center has with five many thin round".split()


@pytest.fixture
def tiny_bert_dir(tmp_path):
    """A tiny randomly initialised BERT sentence encoder with a word-level vocabulary, built locally."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    folder = tmp_path / "tiny-bert"
    BertTokenizer(str(vocab)).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def test_char_tokenizer_follows_reed():
    tokenizer = CharTokenizer()
    assert len(REED_ALPHABET) == 70
    ids = tokenizer("Red PETALS!")["input_ids"]
    assert tokenizer.decode(ids) == "red petals!"  # lower-cased
    assert tokenizer.decode(tokenizer("a😀b\u05e9c\x07d")["input_ids"]) == "abcd"  # unknown characters dropped
    long_ids = tokenizer("x" * 500, truncation=True)["input_ids"]
    assert len(long_ids) == 201
    # Accents and compatibility forms are read as their plain letters, not dropped: "café" is "cafe", not "caf".
    assert tokenizer.decode(tokenizer("Café crème, ＲＯＳＥ ﬂower")["input_ids"]) == "cafe creme, rose flower"
    assert tokenizer("naïve")["input_ids"] == tokenizer("naive")["input_ids"]
    assert tokenizer.decode(tokenizer("kırmızı Straße, ½ Œillet")["input_ids"]) == "kirmizi strasse, 1/2 oeillet"
    # Whitespace reads as the training captions' single spaces; the padding character, pasted in, is no padding.
    assert tokenizer("red\n\tpetals")["input_ids"] == tokenizer("red petals")["input_ids"] == tokenizer("  red  petals ")["input_ids"]
    assert tokenizer("\ue000")["input_ids"] == [] and tokenizer("\ue000 red 🌸")["input_ids"] == tokenizer("red")["input_ids"]


def test_char_cnn_rnn_round_trip(tmp_path):
    encoder = build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG)
    captions = ["a flower with five red petals", "this flower is yellow", "x" * 400]
    before = encoder.encode(captions)
    encoder.save_pretrained(tmp_path)
    reloaded = TextEncoder.from_pretrained(tmp_path)

    assert before.shape == (3, 32) and before.dtype == torch.float32
    assert torch.equal(reloaded.encode(captions), before)
    assert reloaded.fingerprint() == encoder.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json"]


def test_char_cnn_rnn_text_changes_embedding():
    encoder = build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG)
    red, blue = encoder.encode(["red petals", "blue petals"])
    assert not torch.allclose(red, blue)
    assert torch.allclose(encoder.encode(["RED petals"])[0], red, atol=1e-6)  # case-insensitive like Reed's alphabet


def test_transformers_encoder_round_trip_and_mean_pooling(tiny_bert_dir, tmp_path):
    encoder = TextEncoder.from_pretrained(tiny_bert_dir)
    captions = ["a red flower", "the petals are thin and blue with a yellow center"]
    embeddings = encoder.encode(captions)

    batch = encoder.tokenizer(captions, padding=True, return_tensors="pt")
    hidden = encoder.model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(embeddings, expected, atol=1e-6)  # padding never leaks into the mean
    assert embeddings.shape == (2, 32) and encoder.embedding_dim == 32
    assert not any(p.requires_grad for p in encoder.model.parameters())

    encoder.save_pretrained(tmp_path / "copy")
    assert torch.equal(TextEncoder.from_pretrained(tmp_path / "copy").encode(captions), embeddings)


def test_token_features_are_what_the_embedding_pools(tiny_bert_dir):
    captions = ["a red flower", "the petals are thin and blue with a yellow center"]
    char = build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG)
    features, mask = token_features(char.tokenizer, char.model, captions)
    assert features.shape[:2] == mask.shape and mask.all() and features.shape[0] == 2 and features.shape[1] > 1
    torch.testing.assert_close(features.mean(1), encode_text(char.tokenizer, char.model, captions), atol=1e-5, rtol=0)
    bert = TextEncoder.from_pretrained(tiny_bert_dir)
    features, mask = token_features(bert.tokenizer, bert.model, captions)
    assert mask.sum(1).tolist() == [len(bert.tokenizer(c)["input_ids"]) for c in captions]  # padding is masked
    pooled = (features * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), bert.encode(captions), atol=1e-5, rtol=0)


def test_positions_pooling_keeps_every_position_state(tiny_bert_dir, tmp_path):
    from t2i.text_encoders import CharCnnRnnConfig, text_positions, with_position_states

    encoder = build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG)
    captions = ["white petals with red edges", "red petals with white edges"]
    features, _ = token_features(encoder.tokenizer, encoder.model, captions)
    mean = encoder.encode(captions)
    torch.testing.assert_close(features.mean(1), mean, atol=1e-5, rtol=0)
    encoder.save_pretrained(tmp_path / "mean")
    encoder.model.config.pooling = "positions"
    config = encoder.model.config
    assert encoder.embedding_dim == config.num_positions * config.embed_dim == features.shape[1] * features.shape[2]
    assert torch.equal(encoder.encode(captions), features.flatten(1))
    encoder.save_pretrained(tmp_path / "positions")
    # Any char-CNN-RNN has position states to attend over, whatever pooling it was saved with; a BERT has none here.
    assert text_positions(str(tmp_path / "positions")) == text_positions(str(tmp_path / "mean")) == features.shape[1]
    assert text_positions(tiny_bert_dir) == 0
    mean_encoder = TextEncoder.from_pretrained(tmp_path / "mean")
    assert TextEncoder.from_pretrained(tmp_path / "positions").fingerprint() != mean_encoder.fingerprint()
    # with_position_states: the saved mean encoder read per position is the saved positions encoder.
    assert with_position_states(mean_encoder.model) is mean_encoder.model
    assert mean_encoder.fingerprint() == TextEncoder.from_pretrained(tmp_path / "positions").fingerprint()
    assert torch.equal(mean_encoder.encode(captions), features.flatten(1))
    with pytest.raises(ValueError, match="reads a char-CNN-RNN's position states; BertModel gives one pooled embedding"):
        with_position_states(TextEncoder.from_pretrained(tiny_bert_dir).model)
    assert CharCnnRnnConfig().num_positions == 18  # Reed's 201 characters: (((201 − 3) / 3 − 3) / 3) − 3
    with pytest.raises(ValueError, match="pooling must be one of"):
        CharCnnRnnConfig(pooling="max")


def test_both_encoders_as_pipeline_components(tiny_bert_dir, tmp_path):
    for name, encoder in [("char", build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG)), ("bert", TextEncoder.from_pretrained(tiny_bert_dir))]:
        torch.manual_seed(0)
        generator = GanClsGenerator(text_embed_dim=encoder.embedding_dim, ngf=8)
        pipeline = GanClsPipeline(tokenizer=encoder.tokenizer, text_encoder=encoder.model, generator=generator)
        images = pipeline("a red flower", generator=torch.Generator().manual_seed(3), output_type="pt").images
        pipeline.save_pretrained(tmp_path / name)
        reloaded = GanClsPipeline.from_pretrained(tmp_path / name)
        assert type(reloaded.text_encoder) is type(encoder.model)
        assert type(reloaded.tokenizer) is type(encoder.tokenizer)
        assert torch.equal(reloaded("a red flower", generator=torch.Generator().manual_seed(3), output_type="pt").images, images)


def test_minilm_default_loads_offline_from_the_installed_package():
    encoder = TextEncoder.from_pretrained()
    embeddings = encoder.encode(["a flower with red petals", "a flower with crimson petals", "a blue car on a road"])
    assert embeddings.shape == (3, 384)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    similar, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert similar > unrelated + 0.2  # genuine pretrained weights, not a random model


def test_fingerprint_tracks_weights():
    encoder = build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG)
    before = encoder.fingerprint()
    with torch.no_grad():
        encoder.model.projection.bias[0] += 1
    assert encoder.fingerprint() != before


def test_encode_text_on_empty_batch_and_pairs():
    encoder = build_char_cnn_rnn(**TINY_TEXT_ENCODER_CONFIG)
    assert encoder.encode([]).shape == (0, 32)
    assert encode_text(encoder.tokenizer, encoder.model, ["abc"]).shape == (1, 32)
