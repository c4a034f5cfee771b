import pytest
import torch

from t2i import GanClsDiscriminator, GanClsGenerator


@pytest.mark.parametrize("resolution", [64, 128])
def test_generator_and_discriminator_shapes(resolution):
    generator = GanClsGenerator(text_embed_dim=24, ngf=8, resolution=resolution)
    discriminator = GanClsDiscriminator(text_embed_dim=24, ndf=8, resolution=resolution, num_classes=5)
    noise, text = torch.randn(3, 100), torch.randn(3, 24)

    images = generator(noise, text)
    output = discriminator(images, text)

    assert images.shape == (3, 3, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1  # tanh output
    assert output.image_features.shape[-2:] == (4, 4)  # Reed: text is replicated over a 4x4 map
    assert output.logits.shape == (3,)
    assert output.class_logits.shape == (3, 5)


def test_discriminator_scores_several_captions_per_image_in_one_pass():
    discriminator = GanClsDiscriminator(text_embed_dim=24, ndf=8).eval()
    images, right, wrong = torch.randn(4, 3, 64, 64), torch.randn(4, 24), torch.randn(4, 24)
    both = discriminator(images, torch.cat([right, wrong])).logits
    assert torch.allclose(both[:4], discriminator(images, right).logits, atol=1e-6)
    assert torch.allclose(both[4:], discriminator(images, wrong).logits, atol=1e-6)
    with pytest.raises(ValueError, match="need a multiple"):
        discriminator(images, torch.randn(6, 24))


def test_reed_architecture_details():
    generator = GanClsGenerator(text_embed_dim=1024)
    discriminator = GanClsDiscriminator(text_embed_dim=1024)

    assert generator.config.noise_dim == 100
    assert generator.text_projection[0].out_features == 128
    assert generator.text_projection[1].negative_slope == 0.2
    assert isinstance(generator.net[-1], torch.nn.Tanh)
    assert discriminator.joint[0].kernel_size == (1, 1)
    assert discriminator.to_logit.kernel_size == (4, 4)
    assert all(m.stride == (2, 2) for m in discriminator.image_encoder if isinstance(m, torch.nn.Conv2d))


def test_dcgan_initialisation():
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=1024)
    conv_weights = torch.cat([m.weight.flatten() for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    bn_scales = torch.cat([m.weight for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert conv_weights.mean().abs() < 1e-3
    assert conv_weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert bn_scales.mean().item() == pytest.approx(1.0, abs=0.01)


def test_config_holds_every_hyper_parameter(tmp_path):
    generator = GanClsGenerator(text_embed_dim=24, noise_dim=50, text_proj_dim=16, ngf=8, resolution=128)
    generator.save_pretrained(tmp_path)
    reloaded = GanClsGenerator.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(reloaded.config) == public(generator.config)
    noise, text = torch.randn(2, 50), torch.randn(2, 24)
    assert torch.equal(reloaded.eval()(noise, text), generator.eval()(noise, text))


def test_unsupported_resolution_is_refused():
    with pytest.raises(ValueError, match="resolution must be 64 or 128"):
        GanClsGenerator(resolution=96)
    assert GanClsDiscriminator(text_embed_dim=8, ndf=8)(torch.zeros(1, 3, 64, 64), torch.zeros(1, 8)).class_logits is None


def test_text_batch_norm_puts_small_embeddings_on_the_noise_scale(tmp_path):
    torch.manual_seed(0)
    text = torch.randn(64, 384) * 0.05  # sentence embeddings: unit norm over hundreds of dimensions
    plain, normalised = GanClsGenerator(text_embed_dim=384), GanClsGenerator(text_embed_dim=384, text_batch_norm=True)
    # After DCGAN's N(0, 0.02) init the projected text is tiny next to N(0, 1) noise, unless it is normalised.
    assert plain.text_projection(text).std() < 0.05
    assert normalised.text_projection(text).std() > 0.4
    discriminator = GanClsDiscriminator(text_embed_dim=384, text_batch_norm=True)
    assert discriminator.text_projection(text).std() > 0.4

    normalised.train()(torch.randn(64, 100), text)  # running statistics for eval mode
    normalised.save_pretrained(tmp_path)
    reloaded = GanClsGenerator.from_pretrained(tmp_path)
    assert reloaded.config.text_batch_norm is True
    noise = torch.randn(2, 100)
    assert torch.equal(reloaded.eval()(noise, text[:2]), normalised.eval()(noise, text[:2]))


def test_projection_discriminator_scores_matching_as_one_inner_product():
    torch.manual_seed(0)
    discriminator = GanClsDiscriminator(text_embed_dim=24, ndf=8, conditioning="projection").eval()
    images, right, wrong = torch.randn(4, 3, 64, 64), torch.randn(4, 24), torch.randn(4, 24)
    output = discriminator(images, torch.cat([right, wrong]))
    assert output.logits.shape == (8,) and not hasattr(discriminator, "joint")
    # logit = text-free term + <W φ(e), Σ features>: with W = 0 only the text-free term is left, the same for any text
    torch.nn.init.zeros_(discriminator.text_to_features.weight)
    plain = discriminator(images, torch.cat([right, wrong])).logits
    assert torch.allclose(plain[:4], plain[4:]) and torch.allclose(plain[:4], discriminator.to_logit(output.image_features).flatten())
    with pytest.raises(ValueError, match="conditioning must be one of"):
        GanClsDiscriminator(conditioning="attention")
