import importlib.util
import json
from pathlib import Path

import pytest
import torch

from t2i import GanClsDiscriminator, GanClsGenerator
from t2i.models import TextAffineUpBlock, polar_coordinates


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
    # ... which is the unconditional logit, one per image, whatever the text (StackGAN++'s text-free term)
    assert output.unconditional_logits.shape == (4,)
    assert torch.allclose(output.unconditional_logits, plain[:4])
    assert GanClsDiscriminator(text_embed_dim=24, ndf=8)(images, right).unconditional_logits is None  # concat has none
    with pytest.raises(ValueError, match="conditioning must be one of"):
        GanClsDiscriminator(conditioning="attention")


# ----------------------------------------------------------------------------------------------------------------
# Model v3: text in every generator block, conditioning augmentation, multi-scale matching


@pytest.mark.parametrize("resolution", [64, 128])
@pytest.mark.parametrize("options", [{}, {"conditioning_augmentation": True}, {"normalize_text": True, "text_batch_norm": True},
                                     {"polar_harmonics": 3}, {"polar_harmonics": 2, "polar_antialias": True},
                                     {"polar_harmonics": 2, "residual_blocks": True},
                                     {"polar_harmonics": 2, "transposed_up_blocks": True},
                                     {"transposed_up_blocks": True, "residual_blocks": True}])
def test_affine_fusion_generator_shapes_and_round_trip(resolution, options, tmp_path):
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=24, ngf=8, resolution=resolution, fusion="affine", **options)
    noise, text = torch.randn(3, 100), torch.randn(3, 24)
    generator.train()(noise, text)  # running statistics for eval mode
    images = generator.eval()(noise, text)
    assert images.shape == (3, 3, resolution, resolution) and images.abs().max() <= 1
    transposed = [m for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    # Nearest + 3×3 has no checkerboard source; the transposed option has one 4×4 stride-2 layer per up-block.
    assert len(transposed) == (len(generator.up_blocks) if options.get("transposed_up_blocks") else 0)
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in transposed)
    assert len(generator.up_blocks) == (4 if resolution == 64 else 5)
    generator.save_pretrained(tmp_path)
    reloaded = GanClsGenerator.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert reloaded.config.fusion == "affine" and public(reloaded.config) == public(generator.config)
    assert torch.equal(reloaded.eval()(noise, text), images)


def test_every_affine_block_follows_the_text():
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=24, ngf=8, fusion="affine").eval()
    noise, text = torch.randn(2, 100), torch.randn(2, 24)
    # A new block starts as a plain up-sampling convolution (γ = β = 0) ...
    block = generator.up_blocks[-1]
    assert torch.count_nonzero(block.affine.weight) == 0 and torch.count_nonzero(block.affine.bias) == 0
    before = generator(noise, text)
    # ... and a scale predicted from the text in the last block alone changes the image with the text.
    torch.nn.init.normal_(block.affine.weight, std=0.5)
    after_a, after_b = generator(noise, text), generator(noise, text.flip(0))
    assert not torch.allclose(before, after_a)
    assert not torch.allclose(after_a[0], after_b[0])


def test_conditioning_augmentation_samples_around_its_mean():
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=24, text_proj_dim=16, ngf=8, fusion="affine", conditioning_augmentation=True)
    text = torch.randn(4, 24)
    code, mean, log_variance = generator.text_code(text)
    assert torch.equal(code, mean) and mean.shape == log_variance.shape == (4, 16)  # no ε: the mean
    eps = torch.randn(4, 16)
    sampled, _, _ = generator.text_code(text, eps)
    assert torch.allclose(sampled, mean + (0.5 * log_variance).exp() * eps)
    with pytest.raises(ValueError, match="cannot have text_batch_norm"):
        GanClsGenerator(conditioning_augmentation=True, text_batch_norm=True)
    with pytest.raises(ValueError, match="fusion must be one of"):
        GanClsGenerator(fusion="attention")


def test_normalize_text_puts_short_and_long_prompts_on_one_scale():
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=24, ngf=8, fusion="affine", normalize_text=True).eval()
    noise, text = torch.randn(2, 100), torch.randn(2, 24)
    assert torch.allclose(generator(noise, text), generator(noise, 0.75 * text), atol=1e-6)


def test_checkpoints_saved_before_model_v3_load_as_reed_generators(tmp_path):
    import json

    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=24, ngf=8, text_batch_norm=True).eval()
    generator.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("fusion", "conditioning_augmentation", "normalize_text"):  # as written by earlier versions
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = GanClsGenerator.from_pretrained(tmp_path).eval()
    assert reloaded.config.fusion == "input" and not reloaded.config.conditioning_augmentation
    noise, text = torch.randn(2, 100), torch.randn(2, 24)
    assert torch.equal(reloaded(noise, text), generator(noise, text))


def test_multi_scale_projection_judges_the_match_on_the_8x8_map_too():
    torch.manual_seed(0)
    discriminator = GanClsDiscriminator(text_embed_dim=24, ndf=8, conditioning="projection", projection_scales=2).eval()
    assert discriminator.finer_text_to_features[0].out_features == 32  # the 8×8 map has ndf·4 channels
    images, right, wrong = torch.randn(4, 3, 64, 64), torch.randn(4, 24), torch.randn(4, 24)
    torch.nn.init.zeros_(discriminator.text_to_features.weight)  # the 4×4 term is switched off ...
    logits = discriminator(images, torch.cat([right, wrong])).logits
    assert not torch.allclose(logits[:4], logits[4:])  # ... and the text still matters, through the 8×8 term
    torch.nn.init.zeros_(discriminator.finer_text_to_features[0].weight)
    logits = discriminator(images, torch.cat([right, wrong])).logits
    assert torch.allclose(logits[:4], logits[4:])
    with pytest.raises(ValueError, match="projection_scales"):
        GanClsDiscriminator(conditioning="concat", projection_scales=2)
    with pytest.raises(ValueError, match="projection_scales"):
        GanClsDiscriminator(conditioning="projection", projection_scales=5)


def test_projection_regions_pool_the_8x8_map_under_each_mask_with_their_own_text_projection():
    torch.manual_seed(0)
    discriminator = GanClsDiscriminator(text_embed_dim=24, ndf=8, conditioning="projection", projection_regions=2).eval()
    eight_by_eight = {}
    discriminator.image_encoder[7].register_forward_hook(lambda module, inputs, output: eight_by_eight.update(map=output))
    images, right, wrong = torch.randn(4, 3, 64, 64), torch.randn(4, 24), torch.randn(4, 24)
    with torch.no_grad():  # mask 0 where the map's channel 0 is positive, mask 1 elsewhere (nearly hard masks)
        discriminator.region_masks.weight.zero_()
        discriminator.region_masks.weight[0, 0] = 1e9
        discriminator.region_masks.bias.zero_()
    out = discriminator(images, torch.cat([right, wrong]))
    features = eight_by_eight["map"]
    assert features.shape == (4, 32, 8, 8)
    inside = (features[:, :1] > 0).float()
    by_hand = torch.cat([(features * inside).sum(dim=(2, 3)), (features * (1 - inside)).sum(dim=(2, 3))], dim=1) * 16 / 64
    assert torch.allclose(out.image_embeds[:, 64:], by_hand, rtol=1e-4, atol=1e-7)  # after the 4×4 map's 64 channels
    # Each region has its own projection: with the 4×4 term and region 0's off, the text still counts through region 1.
    torch.nn.init.zeros_(discriminator.text_to_features.weight)
    with torch.no_grad():
        discriminator.region_text_to_features.weight[:32].zero_()
    logits = discriminator(images, torch.cat([right, wrong])).logits
    assert not torch.allclose(logits[:4], logits[4:])
    with torch.no_grad():
        discriminator.region_text_to_features.weight.zero_()
    logits = discriminator(images, torch.cat([right, wrong])).logits
    assert torch.allclose(logits[:4], logits[4:])
    for bad in (1, 17, -1, 2.0, True):
        with pytest.raises(ValueError, match="projection_regions"):
            GanClsDiscriminator(conditioning="projection", projection_regions=bad)
    with pytest.raises(ValueError, match="projection_regions needs conditioning='projection'"):
        GanClsDiscriminator(conditioning="concat", projection_regions=3)


@pytest.mark.parametrize("projection_scales, projection_regions", [(1, 0), (2, 0), (1, 3), (2, 4)])
def test_projection_outputs_score_every_image_against_every_caption(projection_scales, projection_regions):
    torch.manual_seed(0)
    discriminator = GanClsDiscriminator(text_embed_dim=24, ndf=8, text_batch_norm=True, conditioning="projection",
                                        projection_scales=projection_scales, projection_regions=projection_regions).eval()
    images, texts = torch.randn(4, 3, 64, 64), torch.randn(4, 24)
    out = discriminator(images, torch.cat([texts, texts.roll(1, 0)]))  # then image i with caption i − 1
    width = 64 + 32 * (projection_scales - 1) + 32 * projection_regions  # 4×4: ndf·8 channels; 8×8: ndf·4
    assert out.image_embeds.shape == (4, width) and out.text_features.shape == (8, width)
    all_pairs = out.unconditional_logits[:, None] + out.image_embeds @ out.text_features[:4].T
    assert torch.allclose(out.logits[:4], all_pairs.diagonal(), atol=1e-5)
    assert torch.allclose(out.logits[4:], all_pairs[torch.arange(4), torch.arange(4).roll(1)], atol=1e-5)
    concat = GanClsDiscriminator(text_embed_dim=24, ndf=8).eval()(images, texts)
    assert concat.image_embeds is None and concat.text_features is None


def test_polar_coordinates_are_radius_and_angle_harmonics_around_the_centre():
    position = polar_coordinates(8, harmonics=2)
    assert position.shape == (5, 8, 8)
    radius, cos1, sin1, cos2, sin2 = position
    assert radius[3:5, 3:5].max() < 0.2 and radius[0, 0] == pytest.approx(2**0.5 * 7 / 8)  # small at the centre
    assert torch.allclose(radius, radius.T) and torch.allclose(radius, radius.flip(0))  # radial
    assert cos1[4, 7] == pytest.approx(1.0, abs=0.02) and sin1[7, 4] == pytest.approx(1.0, abs=0.02)  # θ = 0 right, 90° down
    assert torch.allclose(cos2, cos1**2 - sin1**2, atol=1e-5) and torch.allclose(sin2, 2 * sin1 * cos1, atol=1e-5)


def test_polar_antialias_removes_the_centre_spokes_and_keeps_the_rest():
    plain, windowed = polar_coordinates(64, 6), polar_coordinates(64, 6, antialias=True)
    assert torch.equal(plain[0], windowed[0])  # the radius is never windowed

    def roughness(channels):  # largest step between neighbouring pixels, per channel
        return torch.maximum((channels[:, 1:] - channels[:, :-1]).abs().amax((1, 2)), (channels[:, :, 1:] - channels[:, :, :-1]).abs().amax((1, 2)))

    # Unwindowed, sin 6θ jumps by 2 between the four centre pixels (the spoke star); windowed, no harmonic steps
    # by more than one pixel's worth of a ramp (about 1).
    assert roughness(plain[1:]).max() == pytest.approx(2.0, abs=1e-4)
    assert roughness(windowed[1:]).max() < 1.05, roughness(windowed[1:])
    assert windowed[5:, 31:33, 31:33].abs().max() < 0.15  # ρ = 0.7 px: harmonics k ≥ 3 are nearly off
    # Where a period spans many pixels (ρ ≥ 1.4k, here beyond 9 px for k = 6) the window is above 0.99.
    axis = torch.arange(64) + 0.5 - 32
    far = (axis[:, None] ** 2 + axis[None, :] ** 2).sqrt() > 9
    assert torch.allclose(windowed[1:, far], plain[1:, far], atol=0.01)
    # Harmonic k is windowed on the scale of k pixels: at 6.5 px, k = 1 is whole, k = 6 at about 0.95.
    ratio = (windowed[1:] / plain[1:].where(plain[1:].abs() > 0.1, torch.ones(())))[:, 32, 38]
    assert ratio[0] == pytest.approx(1.0, abs=1e-3) and 0.85 < ratio[-1] < 1.0
    with pytest.raises(ValueError, match="needs polar_harmonics > 0"):
        GanClsGenerator(fusion="affine", polar_antialias=True)


def test_polar_harmonics_feed_every_affine_block_and_need_affine_fusion():
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=12, ngf=8, fusion="affine", polar_harmonics=4)
    assert all(block.position_conv.in_channels == 9 for block in generator.up_blocks)
    block = generator.up_blocks[1]
    hidden, condition = torch.randn(2, block.conv.in_channels, 8, 8), torch.randn(2, 228)
    # The broadcast position term is exactly a 3×3 convolution over the features with the position channels
    # concatenated, each image seeing the same positions.
    joint = torch.nn.Conv2d(block.conv.in_channels + 9, block.conv.out_channels, 3, 1, 1, bias=False)
    with torch.no_grad():
        joint.weight.copy_(torch.cat([block.conv.weight, block.position_conv.weight], dim=1))
    up = torch.nn.functional.interpolate(hidden, scale_factor=2.0)
    concatenated = joint(torch.cat([up, polar_coordinates(16, 4).expand(2, -1, -1, -1)], dim=1))
    scale, shift = block.affine(condition)[:, :, None, None].chunk(2, dim=1)
    expected = torch.relu(block.norm(concatenated) * (1 + scale) + shift)
    assert torch.allclose(block(hidden, condition), expected, atol=1e-5)
    # ... and it makes a difference: with its weights at zero the block is the plain one.
    reference = TextAffineUpBlock(block.conv.in_channels, block.conv.out_channels, condition.shape[1])
    reference.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith("position_conv")})
    assert not torch.allclose(block(hidden, condition), reference(hidden, condition), atol=1e-3)
    # The antialiased block reads the windowed channels, the same way.
    windowed = TextAffineUpBlock(block.conv.in_channels, block.conv.out_channels, condition.shape[1], 4, polar_antialias=True)
    windowed.load_state_dict(block.state_dict())
    concatenated = joint(torch.cat([up, polar_coordinates(16, 4, antialias=True).expand(2, -1, -1, -1)], dim=1))
    assert torch.allclose(windowed(hidden, condition), torch.relu(block.norm(concatenated) * (1 + scale) + shift), atol=1e-5)
    assert not torch.allclose(windowed(hidden, condition), block(hidden, condition), atol=1e-3)
    assert GanClsGenerator(text_embed_dim=12, ngf=8, fusion="affine", polar_harmonics=4, polar_antialias=True).up_blocks[2].polar_antialias
    with torch.no_grad():
        block.position_conv.weight.zero_()
    assert torch.allclose(block(hidden, condition), reference(hidden, condition), atol=1e-6)
    with pytest.raises(ValueError, match="only with fusion='affine'"):
        GanClsGenerator(fusion="input", polar_harmonics=2)


def test_spectral_norm_discriminator_bounds_every_layer_and_has_no_batch_norm():
    torch.manual_seed(0)
    discriminator = GanClsDiscriminator(text_embed_dim=12, ndf=8, conditioning="projection", projection_scales=2,
                                        text_batch_norm=True, spectral_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in discriminator.modules())
    images, text = torch.randn(4, 3, 64, 64), torch.randn(8, 12)
    for _ in range(30):  # each training-mode pass runs one power iteration
        out = discriminator(images, text)
    assert out.logits.shape == (8,) and out.unconditional_logits.shape == (4,)
    layers = [m for m in discriminator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 8  # 4 convolutions, the 4×4 logit, text projection, two text-to-feature maps
    for layer in layers:
        weight = layer.weight.detach().flatten(1)
        assert torch.linalg.matrix_norm(weight, ord=2) == pytest.approx(1.0, abs=0.05)
    plain = GanClsDiscriminator(text_embed_dim=12, ndf=8, conditioning="projection", projection_scales=2, text_batch_norm=True)
    assert max(torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2) for m in plain.modules()
               if isinstance(m, torch.nn.Conv2d)) < 0.8  # DCGAN's N(0, 0.02): SN is what sets the scale


@pytest.mark.parametrize("config", [
    dict(text_embed_dim=24, text_proj_dim=8, ndf=8, text_batch_norm=True, conditioning="projection", projection_scales=2),
    dict(text_embed_dim=16, text_proj_dim=4, ndf=4, resolution=128, conditioning="concat", num_classes=5),
    dict(text_embed_dim=16, text_proj_dim=4, ndf=4, conditioning="projection", projection_scales=3, spectral_norm=True),
    dict(text_embed_dim=16, text_proj_dim=4, ndf=4, conditioning="projection", projection_regions=3, spectral_norm=True),
    dict(text_embed_dim=16, text_proj_dim=4, ndf=4, conditioning="projection", projection_regions=2, first_conv_bias=True),
])
def test_the_discriminator_probe_reads_a_discriminators_config_off_its_weights(config):
    """benchmarks/discriminator_probe.py rebuilds D from a checkpoint's model_1.safetensors alone."""
    spec = importlib.util.spec_from_file_location("discriminator_probe", Path(__file__).parents[1] / "benchmarks" / "discriminator_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    torch.manual_seed(0)
    discriminator = GanClsDiscriminator(**config)
    rebuilt = probe.discriminator_from_weights(discriminator.state_dict())
    assert {k: rebuilt.config[k] for k in discriminator.config if not k.startswith("_")} == {
        k: discriminator.config[k] for k in discriminator.config if not k.startswith("_")}
    images, text = torch.randn(2, 3, discriminator.config.resolution, discriminator.config.resolution), torch.randn(4, config["text_embed_dim"])
    discriminator.eval(), rebuilt.eval()
    assert torch.equal(discriminator(images, text).logits, rebuilt(images, text).logits)


def test_residual_blocks_grow_a_trained_generator_without_changing_what_it_draws():
    torch.manual_seed(0)
    options = dict(text_embed_dim=24, ngf=8, fusion="affine", normalize_text=True, text_batch_norm=True, polar_harmonics=2)
    trained, grown = GanClsGenerator(**options), GanClsGenerator(**options, residual_blocks=True)
    noise, text = torch.randn(6, 100), torch.randn(6, 24)
    trained.train()(noise, text)  # running statistics, copied along
    grown.grow_from_(trained)
    assert all(block.residual and block.conv2.out_channels == block.conv.out_channels for block in grown.up_blocks)
    assert torch.equal(grown.eval()(noise, text), trained.eval()(noise, text))
    assert torch.equal(grown.train()(noise, text), trained.train()(noise, text))  # batch statistics too
    # The zero gain still learns: its gradient is the residual branch's output, which is not zero ...
    grown.train()(noise, text).square().mean().backward()
    gains = [block.residual_gain.grad for block in grown.up_blocks]
    assert all(g is not None and g.abs() > 0 for g in gains)
    # ... and once it moves, the second convolution changes the image.
    with torch.no_grad():
        grown.up_blocks[-1].residual_gain.fill_(0.5)
    assert not torch.allclose(grown.eval()(noise, text), trained.eval()(noise, text), atol=1e-4)
    # Equal configs copy every tensor, the residual gains included.
    twin = GanClsGenerator(**options, residual_blocks=True)
    twin.grow_from_(grown)
    assert torch.equal(twin.eval()(noise, text), grown.eval()(noise, text))


@pytest.mark.parametrize("resolution", [64, 128])
def test_deep_fusion_grows_reeds_generator_without_changing_what_it_draws(resolution, tmp_path):
    torch.manual_seed(0)
    options = dict(text_embed_dim=24, ngf=8, resolution=resolution, normalize_text=True, text_batch_norm=True)
    trained, grown = GanClsGenerator(**options), GanClsGenerator(**options, deep_fusion=True)
    # One affine per BatchNorm of Reed's layers: the 4×4 stem and every up-sampling layer but the last.
    norms = [m.num_features for m in grown.net if isinstance(m, torch.nn.BatchNorm2d)]
    assert [affine.out_features for affine in grown.fusion_affines] == [2 * n for n in norms]
    assert len(norms) == (4 if resolution == 64 else 5) and norms[0] == 8 * 2 ** (len(norms) - 1)
    # Reed's own tensors keep their names, so a Reed checkpoint's every tensor has a place in the grown one.
    assert set(trained.state_dict()) < set(grown.state_dict())
    assert {k.split(".")[0] for k in set(grown.state_dict()) - set(trained.state_dict())} == {"fusion_affines"}
    noise, text = torch.randn(6, 100), torch.randn(6, 24)
    trained.train()(noise, text)
    grown.grow_from_(trained)
    assert torch.equal(grown.eval()(noise, text), trained.eval()(noise, text))
    assert torch.equal(grown.train()(noise, text), trained.train()(noise, text))
    # The zero affines still learn (their gradient is the BatchNorm output times the condition), and once they
    # move the text reaches every layer.
    grown.train()(noise, text).square().mean().backward()
    assert all(affine.weight.grad.abs().sum() > 0 for affine in grown.fusion_affines)
    with torch.no_grad():
        grown.fusion_affines[-1].weight.normal_(0, 0.5)
    images = grown.eval()(noise, text)
    assert images.shape == (6, 3, resolution, resolution) and images.abs().max() <= 1
    assert not torch.allclose(images, trained.eval()(noise, text), atol=1e-4)
    grown.save_pretrained(tmp_path)
    reloaded = GanClsGenerator.from_pretrained(tmp_path)
    assert reloaded.config.deep_fusion is True and torch.equal(reloaded.eval()(noise, text), images)
    # A grown generator cannot be shrunk back, and fusion='affine' has its own per-block affines.
    with pytest.raises(ValueError, match="differ in deep_fusion"):
        GanClsGenerator(**options).grow_from_(grown)
    with pytest.raises(ValueError, match="deep_fusion adds text affines to Reed's layers: it needs fusion='input'"):
        GanClsGenerator(fusion="affine", deep_fusion=True)


def test_fusion_masks_grow_deep_fusion_into_spatial_affines_that_give_regions_their_own_colour(tmp_path):
    torch.manual_seed(0)
    options = dict(text_embed_dim=24, ngf=8, normalize_text=True, text_batch_norm=True, deep_fusion=True)
    trained, grown = GanClsGenerator(**options), GanClsGenerator(**options, fusion_masks=3)
    norms = [m.num_features for m in grown.net if isinstance(m, torch.nn.BatchNorm2d)]
    assert [p.out_channels for p in grown.fusion_mask_predictors] == [3] * len(norms)
    assert [a.out_features for a in grown.fusion_mask_affines] == [2 * 3 * n for n in norms]
    added = {k.split(".")[0] for k in set(grown.state_dict()) - set(trained.state_dict())}
    assert added == {"fusion_mask_predictors", "fusion_mask_affines"}  # deep fusion's own tensors keep their names
    noise, text = torch.randn(6, 100), torch.randn(6, 24)
    trained.train()(noise, text)
    with torch.no_grad():
        trained.fusion_affines[1].weight.normal_(0, 0.3)  # a trained deep-fusion generator
        for affine in grown.fusion_mask_affines:  # growth itself must zero the new text terms
            affine.weight.normal_(0, 0.3)
    grown.grow_from_(trained)
    assert torch.equal(grown.eval()(noise, text), trained.eval()(noise, text))
    assert torch.equal(grown.train()(noise, text), trained.train()(noise, text))
    grown.train()(noise, text).square().mean().backward()
    assert all(a.weight.grad.abs().sum() > 0 for a in grown.fusion_mask_affines)

    # A mask gives its region its own affine: with the masks split left / right by hand, a shift on mask 0 moves
    # only the positions mask 0 covers, by exactly the shift.
    layer = grown.eval().fusion_mask_predictors[-1]
    channels = norms[-1]
    hidden = torch.randn(2, channels, 4, 4)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        grown.fusion_mask_affines[-1].weight.zero_()
        grown.fusion_mask_affines[-1].bias.zero_()
        grown.fusion_mask_affines[-1].bias.view(3, 2 * channels)[0, channels:] = 2.0  # mask 0's shift
        hidden[:, 0, :, :2], hidden[:, 0, :, 2:] = 50.0, -50.0  # channel 0 decides the mask, through a wide logit
        layer.weight[0, 0] = 1.0
    condition = torch.randn(2, 100 + grown.config.text_proj_dim)
    term = grown._masked_affine(hidden, condition, len(norms) - 1)
    assert term.shape == (2, 2 * channels, 4, 4)
    scale, shift = term.chunk(2, dim=1)
    assert torch.allclose(scale, torch.zeros_like(scale))
    assert torch.allclose(shift[:, :, :, :2], torch.full_like(shift[:, :, :, :2], 2.0), atol=1e-4)
    assert torch.allclose(shift[:, :, :, 2:], torch.zeros_like(shift[:, :, :, 2:]), atol=1e-4)
    # channels_last in, channels_last out (a mixed-layout add is slow), with the same values.
    last = grown._masked_affine(hidden.contiguous(memory_format=torch.channels_last), condition, len(norms) - 1)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.allclose(last, term)

    grown.save_pretrained(tmp_path)
    reloaded = GanClsGenerator.from_pretrained(tmp_path)
    assert reloaded.config.fusion_masks == 3 and torch.equal(reloaded.eval()(noise, text), grown.eval()(noise, text))
    with pytest.raises(ValueError, match=r"differ in fusion_masks: 3 \(here 0\)"):  # neither shrunk nor re-counted
        GanClsGenerator(**options).grow_from_(grown)
    with pytest.raises(ValueError, match=r"differ in fusion_masks: 3 \(here 2\)"):
        GanClsGenerator(**options, fusion_masks=2).grow_from_(grown)
    with pytest.raises(ValueError, match="fusion_masks makes deep fusion's affines spatial: it needs deep_fusion=True"):
        GanClsGenerator(fusion_masks=2)
    for bad in (-1, 1, 17, True, 2.0, "3"):  # one mask is a softmax of one, 1 everywhere: a term that learns nothing
        with pytest.raises(ValueError, match=f"fusion_masks must be a whole number from 2 to 16 \\(0 = off\\), got {bad!r}"):
            GanClsGenerator(deep_fusion=True, fusion_masks=bad)
    # A deep-fusion generator saved before the option existed (no fusion_masks in its config) loads without masks.
    trained.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["fusion_masks"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = GanClsGenerator.from_pretrained(tmp_path / "old")
    assert old.config.fusion_masks == 0 and torch.equal(old.eval()(noise, text), trained.eval()(noise, text))


@pytest.mark.parametrize("deep_fusion", [False, True])
def test_output_palette_grows_into_a_generator_and_paints_each_region_a_colour_linear_in_the_text(deep_fusion, tmp_path):
    torch.manual_seed(0)
    options = dict(text_embed_dim=24, ngf=8, normalize_text=True, text_batch_norm=True, deep_fusion=deep_fusion)
    trained, grown = GanClsGenerator(**options), GanClsGenerator(**options, output_palette=4)
    assert grown.palette_masks.out_channels == 4 and grown.palette_colors.out_features == 4 * 3
    added = {k.split(".")[0] for k in set(grown.state_dict()) - set(trained.state_dict())}
    assert added == {"palette_masks", "palette_colors"}  # Reed's tensors keep their names
    noise, text = torch.randn(6, 100), torch.randn(6, 24)
    trained.train()(noise, text)
    with torch.no_grad():
        if deep_fusion:
            trained.fusion_affines[1].weight.normal_(0, 0.3)
        grown.palette_colors.weight.normal_(0, 0.3)  # growth itself must zero the colours
    grown.grow_from_(trained)
    assert torch.equal(grown.eval()(noise, text), trained.eval()(noise, text))
    assert torch.equal(grown.train()(noise, text), trained.train()(noise, text))
    grown.train()(noise, text).square().mean().backward()
    assert grown.palette_colors.weight.grad.abs().sum() > 0  # zero at the start, trained from the first step

    # Each region gets exactly its own colour, linear in the condition: channel 0 of the last layer's input, +50 on
    # the left half and -50 on the right, picks region 0 on the left and region 1 on the right (a wide logit), and
    # region k's colour is W_k · c + b_k.
    condition_dim = 100 + grown.config.text_proj_dim
    with torch.no_grad():
        grown.palette_masks.weight.zero_()
        grown.palette_masks.bias.copy_(torch.tensor([0.0, 0.0, -1e4, -1e4]))
        grown.palette_masks.weight[0, 0] = 0.25  # a 4×4 stride-2 kernel: each output pixel sums 4 input taps of it
        grown.palette_masks.weight[0, 1] = -0.25
        grown.palette_colors.weight.normal_(0, 0.1)
    hidden = torch.zeros(2, 8, 32, 32)
    hidden[:, 0, :, :16], hidden[:, 0, :, 16:] = 50.0, -50.0
    condition = torch.randn(2, condition_dim)
    rgb = torch.zeros(2, 3, 64, 64)
    paint = grown._palette(hidden, condition, rgb)
    assert paint.shape == (2, 3, 64, 64)
    colors = grown.palette_colors(condition).view(2, 4, 3)
    interior = slice(2, 30), slice(34, 62)  # away from the border between the halves and the image's edge
    assert torch.allclose(paint[:, :, :, interior[0]], colors[:, 0, :, None, None].expand(2, 3, 64, 28), atol=1e-4)
    assert torch.allclose(paint[:, :, :, interior[1]], colors[:, 1, :, None, None].expand(2, 3, 64, 28), atol=1e-4)
    doubled = grown._palette(hidden, 2 * condition, rgb)  # linear in c: the bias plus twice the weight's part
    bias = grown.palette_colors.bias.view(4, 3)
    assert torch.allclose(doubled[:, :, :, interior[0]] - bias[0, :, None, None], 2 * (paint[:, :, :, interior[0]] - bias[0, :, None, None]), atol=1e-4)
    last = grown._palette(hidden.contiguous(memory_format=torch.channels_last), condition,
                          rgb.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.allclose(last, paint, atol=1e-5)

    grown.save_pretrained(tmp_path)
    reloaded = GanClsGenerator.from_pretrained(tmp_path)
    assert reloaded.config.output_palette == 4 and torch.equal(reloaded.eval()(noise, text), grown.eval()(noise, text))
    with pytest.raises(ValueError, match=r"differ in output_palette: 4 \(here 0\)"):
        GanClsGenerator(**options).grow_from_(grown)
    with pytest.raises(ValueError, match="output_palette paints the last layer of Reed's generator: it needs fusion='input'"):
        GanClsGenerator(fusion="affine", output_palette=2)
    for bad in (-1, 1, 17, True):
        with pytest.raises(ValueError, match=f"output_palette must be a whole number from 2 to 16 \\(0 = off\\), got {bad!r}"):
            GanClsGenerator(output_palette=bad)


@pytest.mark.parametrize("other, message", [
    ({"ngf": 16}, r"ngf: 16 \(here 8\)"),
    ({"polar_harmonics": 0}, r"polar_harmonics: 0 \(here 2\)"),
    ({"residual_blocks": True}, "residual_blocks"),  # a deeper generator cannot be shrunk into this one
])
def test_growing_from_another_generator_is_refused_with_the_difference_named(other, message):
    options = dict(text_embed_dim=24, ngf=8, fusion="affine", polar_harmonics=2)
    with pytest.raises(ValueError, match=message):
        GanClsGenerator(**options).grow_from_(GanClsGenerator(**{**options, **other}))
    for option in ("residual_blocks", "transposed_up_blocks"):
        with pytest.raises(ValueError, match=f"{option} shape the text-affine up-blocks: they need fusion='affine'"):
            GanClsGenerator(fusion="input", **{option: True})


def test_freezing_discriminator_blocks_keeps_them_fixed_and_on_running_statistics():
    torch.manual_seed(0)
    discriminator = GanClsDiscriminator(text_embed_dim=24, ndf=8, conditioning="projection", first_conv_bias=True)
    keys = set(discriminator.state_dict())
    discriminator.freeze_image_encoder_(2)
    assert set(discriminator.state_dict()) == keys  # nothing extra to save or to miss on load
    frozen = {k for k, p in discriminator.named_parameters() if not p.requires_grad}
    assert frozen == {"image_encoder.0.weight", "image_encoder.0.bias", "image_encoder.2.weight",
                      "image_encoder.3.weight", "image_encoder.3.bias"}  # blocks 1 and 2: conv, conv + BatchNorm
    before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
    discriminator.train()
    assert not discriminator.image_encoder[3].training and discriminator.image_encoder[6].training
    discriminator(torch.randn(4, 3, 64, 64) * 3, torch.randn(4, 24)).logits.sum().backward()
    optimizer.step()
    after = discriminator.state_dict()
    for key in before:  # frozen weights and running statistics stay; everything above moved, statistics included
        assert torch.equal(before[key], after[key]) == key.startswith(("image_encoder.0.", "image_encoder.2.", "image_encoder.3.")), key
    discriminator.freeze_image_encoder_(0)  # unfreezing gives every layer back to training
    assert all(p.requires_grad for p in discriminator.parameters()) and discriminator.image_encoder[3].training
    with pytest.raises(ValueError, match=r"num_blocks must be in \[0, 4\]"):
        discriminator.freeze_image_encoder_(5)


def test_text_attention_starts_as_the_mean_of_the_positions_and_learns_to_pick_one():
    from t2i.models import TextAttentionPooling

    torch.manual_seed(0)
    tokens = torch.randn(5, 6, 4)  # 5 captions, 6 positions of 4-d states
    pooling = TextAttentionPooling(positions=6, dim=4, heads=3)
    pooled = pooling(tokens.flatten(1))
    assert pooled.shape == (5, 12)
    torch.testing.assert_close(pooled, tokens.mean(1).repeat(1, 3))  # zero scores: every head is the mean (Reed's embedding)
    # A head whose score favours a feature attends to the position holding it.
    with torch.no_grad():
        pooling.scores.weight[0] = torch.tensor([50.0, 0, 0, 0])
    tokens[:, 2, 0] = 10.0
    torch.testing.assert_close(pooling(tokens.flatten(1))[:, :4], tokens[:, 2], atol=1e-4, rtol=0)

    generator = GanClsGenerator(text_embed_dim=6 * 4, ngf=8, text_positions=6, text_attention_heads=2)
    discriminator = GanClsDiscriminator(text_embed_dim=6 * 4, ndf=8, conditioning="projection", text_positions=6, text_attention_heads=2)
    images = generator(torch.randn(5, 100), tokens.flatten(1))
    assert images.shape == (5, 3, 64, 64) and discriminator(images, tokens.flatten(1)).logits.shape[0] == 5
    for positions, heads, dim in ((0, 2, 24), (1, 2, 24), (5, 2, 24), (6, -1, 24)):
        with pytest.raises(ValueError, match="text_attention_heads must be ≥ 0, and > 0 only with text_positions ≥ 2 dividing"):
            GanClsGenerator(text_embed_dim=dim, ngf=8, text_positions=positions, text_attention_heads=heads)
