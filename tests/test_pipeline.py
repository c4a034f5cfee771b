import numpy as np
import PIL.Image
import pytest
import torch

from t2i import CheckpointError, GanClsGenerator, GanClsPipeline
from t2i.pipeline import MAX_IMAGES_PER_CALL, RENDER_BATCH_SIZE, to_unit_range

from conftest import make_tiny_pipeline


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_output_types(tiny_pipeline):
    pil = tiny_pipeline(["a red flower", "a blue flower"], num_images_per_prompt=2, generator=seeded()).images
    np_images = tiny_pipeline(["a red flower", "a blue flower"], num_images_per_prompt=2, generator=seeded(), output_type="np").images
    pt_images = tiny_pipeline(["a red flower", "a blue flower"], num_images_per_prompt=2, generator=seeded(), output_type="pt").images

    assert len(pil) == 4 and all(isinstance(im, PIL.Image.Image) and im.size == (64, 64) for im in pil)
    assert np_images.shape == (4, 64, 64, 3) and np_images.min() >= 0 and np_images.max() <= 1
    assert pt_images.shape == (4, 3, 64, 64)
    assert np.array_equal(np.asarray(pil[1]), (np_images[1] * 255).round().astype(np.uint8))
    assert torch.equal(torch.from_numpy(np_images).permute(0, 3, 1, 2), pt_images)
    assert isinstance(tiny_pipeline("a", return_dict=False)[0], list)


def test_same_seed_same_images_and_batch_independence(tiny_pipeline):
    first = tiny_pipeline("five pink petals", num_images_per_prompt=3, generator=seeded(7), output_type="pt").images
    again = tiny_pipeline("five pink petals", num_images_per_prompt=3, generator=seeded(7), output_type="pt").images
    other = tiny_pipeline("five pink petals", num_images_per_prompt=3, generator=seeded(8), output_type="pt").images
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # each image gets its own noise
    # eval-mode BatchNorm: an image does not depend on the rest of its batch
    noise = torch.randn(2, 100, generator=seeded(1))
    single = tiny_pipeline("five pink petals", latents=noise[:1], output_type="pt").images
    batch = tiny_pipeline(["five pink petals", "red"], latents=noise, output_type="pt").images
    assert torch.allclose(single[0], batch[0], atol=1e-6)


@pytest.mark.parametrize("resolution", [64, 128])
def test_determinism_across_save_and_load(tmp_path, resolution):
    pipeline = make_tiny_pipeline(resolution=resolution)
    expected = pipeline(["a red flower", "thin petals"], generator=seeded(11), output_type="pt").images
    pipeline.save_pretrained(tmp_path)
    reloaded = GanClsPipeline.from_pretrained(tmp_path)
    assert expected.shape[-1] == resolution
    assert torch.equal(reloaded(["a red flower", "thin petals"], generator=seeded(11), output_type="pt").images, expected)


def test_save_writes_safetensors_only(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "generator/config.json",
        "generator/diffusion_pytorch_model.safetensors",
        "model_index.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
    ]


def test_prompt_embeds_skip_the_text_encoder(tiny_pipeline):
    embeds = tiny_pipeline.encode_prompt(["a red flower", "blue"])
    direct = tiny_pipeline(prompt_embeds=embeds, generator=seeded(), output_type="pt").images
    via_text = tiny_pipeline(["a red flower", "blue"], generator=seeded(), output_type="pt").images
    assert torch.equal(direct, via_text)


def test_text_interpolation_holds_noise_fixed(tiny_pipeline):
    strip = tiny_pipeline.interpolate("a red flower", "many thin yellow petals!", num_steps=5, generator=seeded(2), output_type="pt").images
    noise = torch.randn(1, 100, generator=seeded(2))
    start = tiny_pipeline("a red flower", latents=noise, output_type="pt").images[0]
    end = tiny_pipeline("many thin yellow petals!", latents=noise, output_type="pt").images[0]
    assert strip.shape == (5, 3, 64, 64)
    assert torch.allclose(strip[0], start, atol=1e-6) and torch.allclose(strip[-1], end, atol=1e-6)
    e_a, e_b = tiny_pipeline.encode_prompt(["a red flower", "many thin yellow petals!"])
    middle = tiny_pipeline(prompt_embeds=(e_a + e_b)[None] / 2, latents=noise, output_type="pt").images[0]
    assert torch.allclose(strip[2], middle, atol=1e-6)
    assert not torch.equal(strip[2], start) and not torch.equal(strip[2], end)


def test_noise_interpolation_holds_text_fixed(tiny_pipeline):
    strip = tiny_pipeline.interpolate_noise("a red flower", num_steps=4, generator=seeded(5), output_type="pt").images
    z_a, z_b = torch.randn(2, 100, generator=seeded(5))
    start = tiny_pipeline("a red flower", latents=z_a[None], output_type="pt").images[0]
    end = tiny_pipeline("a red flower", latents=z_b[None], output_type="pt").images[0]
    assert torch.allclose(strip[0], start, atol=1e-5) and torch.allclose(strip[-1], end, atol=1e-5)
    assert len(tiny_pipeline.interpolate_noise("a red flower", num_steps=3).images) == 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p(""), "prompt is empty"),
        (lambda p: p(["a red flower", "  \n\t"]), r"prompt\[1\] is empty"),
        (lambda p: p(["a red flower", 5]), r"prompt\[1\] must be a string, got 5"),
        (lambda p: p("🌸"), "^prompt '🌸' has no characters this model can read"),
        (lambda p: p(prompt_embeds=torch.full((1, 32), float("nan"))), "prompt_embeds hold NaN or infinite values"),
        (lambda p: p(prompt_embeds=torch.full((1, 32), float("inf"))), "prompt_embeds hold NaN or infinite values"),
        (lambda p: p(prompt_embeds=np.zeros((1, 32))), "prompt_embeds must be a torch.Tensor, got ndarray"),
        (lambda p: p(prompt_embeds=[[0.0] * 32]), "prompt_embeds must be a torch.Tensor, got list"),
        (lambda p: p(prompt_embeds=torch.zeros(0, 32)), r"prompt_embeds must have shape \[B, 32\] with B ≥ 1, got \(0, 32\)"),
        (lambda p: p.interpolate_noise(["red", "blue"]), r"^prompt must be a string, got \['red', 'blue'\]"),
        (lambda p: p([]), "non-empty list"),
        (lambda p: p(123), "string or a non-empty list"),
        (lambda p: p("red", output_type="jpeg"), "output_type"),
        (lambda p: p("red", num_images_per_prompt=0), "num_images_per_prompt"),
        (lambda p: p("red", latents=torch.zeros(2, 100)), "latents must have shape"),
        (lambda p: p("red", latents=np.zeros((1, 100))), "latents must be a torch.Tensor, got ndarray"),
        (lambda p: p("red", latents=torch.full((1, 100), float("nan"))), "latents hold NaN"),
        (lambda p: p("red", num_images_per_prompt=2, generator=[torch.Generator()]), r"a list of 1 generator\(s\) for 2 image\(s\)"),
        (lambda p: p("red", generator=[torch.Generator()] * 3), r"a list of 3 generator\(s\) for 1 image\(s\)"),
        (lambda p: p("red", generator=[0]), "generator must be a torch.Generator or a list of them"),
        (lambda p: p.interpolate_noise("red", generator=(torch.Generator(), torch.Generator())), "generator must be a torch.Generator"),
        (lambda p: p.interpolate_noise("red", generator=[torch.Generator()]), "interpolate_noise's two end points: pass a list of 2"),
        (lambda p: p.interpolate("red", "blue", generator=[torch.Generator()] * 2), "interpolate's one noise vector: pass a list of 1"),
        (lambda p: p.prepare_latents(4, [torch.Generator()] * 3), r"for 4 noise vector\(s\)"),
        (lambda p: p(), "exactly one of"),
        (lambda p: p.interpolate("red", "blue", num_steps=1), "num_steps"),
        (lambda p: p.interpolate_noise("", num_steps=3), "prompt is empty"),
        # Each of interpolate's two prompts is named.
        (lambda p: p.interpolate("", "white"), "prompt_a is empty"),
        (lambda p: p.interpolate(None, "white"), "prompt_a must be a string, got None"),
        (lambda p: p.interpolate("red", "  "), "prompt_b is empty"),
        (lambda p: p.interpolate("red", "玫瑰花"), "prompt_b '玫瑰花' has no characters this model can read"),
        # A call's size is bounded, whichever argument asks for too much: a clear error instead of exhausting memory.
        (lambda p: p("red", num_images_per_prompt=10**6), "1 prompt\\(s\\) × num_images_per_prompt=1000000 is 1000000 images; one call makes at most 4096"),
        (lambda p: p(["red"] * 2049, num_images_per_prompt=2), "4098 images; one call makes at most 4096"),
        (lambda p: p(prompt_embeds=torch.zeros(4097, 32)), "4097 images; one call makes at most 4096"),
        (lambda p: p.interpolate("red", "blue", num_steps=10**6), "num_steps must be an integer from 2 to 4096, got 1000000"),
        (lambda p: p.interpolate_noise("red", num_steps=4097), "num_steps must be an integer from 2 to 4096"),
        (lambda p: p.interpolate("red", "blue", num_steps=True), "num_steps must be an integer"),
    ],
)
def test_bad_arguments_get_clear_errors(tiny_pipeline, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_pipeline)


def test_a_large_call_renders_in_batches_like_one_pass(tiny_pipeline):
    """A call of more than RENDER_BATCH_SIZE images runs the generator that many at a time (the last batch shorter),
    and gives what one forward pass over the whole batch gives."""
    assert MAX_IMAGES_PER_CALL > RENDER_BATCH_SIZE
    count = 2 * RENDER_BATCH_SIZE + 1
    embeds = tiny_pipeline.encode_prompt(["a red flower", "blue petals"]).repeat(count, 1)[:count]
    noise = torch.randn(count, 100, generator=seeded(3))
    images = tiny_pipeline(prompt_embeds=embeds, latents=noise, output_type="pt").images
    with torch.inference_mode():
        whole = to_unit_range(tiny_pipeline.generator(noise, embeds))
    assert images.shape == (count, 3, 64, 64)
    torch.testing.assert_close(images, whole, atol=1e-5, rtol=0)


def test_noise_interpolation_between_one_seed_and_itself_warns(tiny_pipeline, caplog):
    with caplog.at_level("WARNING", logger="t2i.pipeline"):
        frames = tiny_pipeline.interpolate_noise("red", num_steps=3, generator=[seeded(4), seeded(4)], output_type="pt").images
        assert "both end points drew the same noise" in caplog.text and torch.equal(frames[0], frames[2])
        caplog.clear()
        tiny_pipeline.interpolate_noise("red", num_steps=3, generator=[seeded(4), seeded(5)])
    assert not caplog.records


def test_odd_and_huge_prompts_work(tiny_pipeline):
    # (A prompt with nothing readable, such as "זהו פרח אדום" alone, is refused: see the test below.)
    prompts = ["😀🌸 flower", "זהו פרח red", "red\x00\x07 petals\u202e", "petals " * 2000]
    images = tiny_pipeline(prompts, generator=seeded(), output_type="np").images
    assert images.shape == (4, 64, 64, 3) and np.isfinite(images).all()


def test_a_prompt_longer_than_the_encoder_reads_is_cut_with_a_warning(tiny_pipeline, caplog):
    with caplog.at_level("WARNING", logger="t2i.pipeline"):
        long = tiny_pipeline.encode_prompt(["red " * 100, "a red flower"])
    # 100 × "red " is 399 characters as read: the trailing space is not (whitespace at the ends never is).
    assert len(caplog.records) == 1 and "399 tokens long; the text encoder reads the first 201" in caplog.text
    assert torch.allclose(long[0], tiny_pipeline.encode_prompt(("red " * 100)[:201])[0], atol=1e-5)  # the cut, made explicit


def test_text_encoder_and_generator_must_agree(tiny_pipeline):
    with pytest.raises(CheckpointError, match="32-d embeddings but the generator expects 64-d"):
        GanClsPipeline(tokenizer=tiny_pipeline.tokenizer, text_encoder=tiny_pipeline.text_encoder, generator=GanClsGenerator(text_embed_dim=64, ngf=8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_cuda_with_the_cpu_seed(tiny_pipeline):
    cpu = tiny_pipeline("a red flower", generator=seeded(4), output_type="pt").images
    cuda = tiny_pipeline.to("cuda")("a red flower", generator=seeded(4), output_type="pt").images
    assert cuda.device.type == "cuda"
    assert torch.allclose(cuda.cpu(), cpu, atol=1e-3)


@pytest.mark.parametrize("prompt", ["玫瑰花", "🌸🌸🌸", "\u200b\u200d", "وردة حمراء", "Ωραίο λουλούδι", "\u0301\u0301"])
def test_prompts_the_tokenizer_cannot_read_are_refused_by_name(tiny_pipeline, prompt):
    with pytest.raises(ValueError, match="no characters this model can read") as error:
        tiny_pipeline(prompt)
    assert repr(prompt[0])[1:-1] in str(error.value)  # the message names what it cannot read, first as typed first
    with pytest.raises(ValueError, match="no characters this model can read"):
        tiny_pipeline.encode_prompt(["a red flower", prompt])  # in a batch too


def test_prompts_with_some_readable_text_still_generate(tiny_pipeline):
    from t2i.serving import clean_prompt

    images = tiny_pipeline("a rose 🌸", output_type="np").images
    assert images.shape == (1, 64, 64, 3)
    # The app's rule is the library's: it drops what the library cannot read and keeps the rest.
    assert clean_prompt("a rose 🌸", tiny_pipeline.tokenizer)[0] == "a rose"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_same_seed_gives_the_same_image_on_cuda(tiny_pipeline):
    pipeline = tiny_pipeline.to("cuda")
    first = pipeline("a red flower", num_images_per_prompt=3, generator=seeded(7), output_type="pt").images
    second = pipeline("a red flower", num_images_per_prompt=3, generator=seeded(7), output_type="pt").images
    assert torch.equal(first, second)
    assert not torch.equal(first, pipeline("a red flower", num_images_per_prompt=3, generator=seeded(8), output_type="pt").images)


def test_bad_arguments_are_named(tiny_pipeline):
    with pytest.raises(ValueError, match="num_images_per_prompt must be a positive integer"):
        tiny_pipeline("a red flower", num_images_per_prompt=True)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        tiny_pipeline("a red flower", generator=0)
    with pytest.raises(ValueError, match=r"prompt_embeds must have shape \[B, 32\]"):
        tiny_pipeline(prompt_embeds=torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"prompt\[1\] is empty"):
        tiny_pipeline(["a red flower", "  "])
    # float64 inputs are cast, not refused with a matrix-multiplication error
    images = tiny_pipeline(prompt_embeds=torch.zeros(1, 32, dtype=torch.float64), latents=torch.zeros(1, 100, dtype=torch.float64),
                           output_type="np").images
    assert images.shape == (1, 64, 64, 3)


def test_self_contained_source_inlines_relative_imports(tmp_path, monkeypatch):
    import ast

    from t2i.pipeline import self_contained_source

    source = self_contained_source("t2i.pipeline")
    tree = ast.parse(source)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    defined = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert {"GanClsPipeline", "CharCnnRnnEncoder", "SafetensorsOnlyMixin", "check_readable"} <= defined

    package = tmp_path / "clash"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import helper\n\n\ndef helper():\n    return 1\n")
    (package / "b.py").write_text("def helper():\n    return 2\n")
    (package / "c.py").write_text("def f():\n    from .b import helper\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="'helper' is defined in both clash.b and clash.a"):
        self_contained_source("clash.a")
    with pytest.raises(ValueError, match="clash.c, line 2: cannot inline"):
        self_contained_source("clash.c")


def test_component_names_of_every_layout_mean_t2i_classes():
    from t2i.pipeline import _component_class
    from t2i.text_encoders import CharCnnRnnEncoder

    # t2i's own layout, the remote-code layout, and what a pipeline loaded as remote code once saved
    for library in ("t2i.models", "models", "diffusers_modules.local.models", "diffusers_modules.local.org--repo.models"):
        assert _component_class(library, "GanClsGenerator") is GanClsGenerator
    assert _component_class("text_encoders", "CharCnnRnnEncoder") is CharCnnRnnEncoder
    for library, name in (("os", "system"), ("t2i.models", "standing_batch_norm_"), ("models", "Nothing")):
        with pytest.raises(CheckpointError, match="not a model or tokenizer class"):
            _component_class(library, name)


def test_a_text_attention_generator_reads_a_mean_pooled_char_cnn_rnn_per_position(tmp_path):
    """A generator with word-level attention beside a char-CNN-RNN saved mean-pooled (as pretrained/ keeps its text
    encoder, for every other user of it): the pipeline reads the encoder's position states, and saves and reloads so."""
    pooled = make_tiny_pipeline(seed=0)
    config = pooled.text_encoder.config
    torch.manual_seed(0)
    generator = GanClsGenerator(text_embed_dim=config.num_positions * config.embed_dim, ngf=8,
                                text_positions=config.num_positions, text_attention_heads=2)
    assert config.pooling == "mean"
    pipeline = GanClsPipeline(tokenizer=pooled.tokenizer, text_encoder=pooled.text_encoder, generator=generator)
    assert pipeline.text_encoder.config.pooling == "positions"
    states = pipeline.text_encoder.position_features(pipeline.tokenizer(["white petals"], return_tensors="pt")["input_ids"])
    torch.testing.assert_close(pipeline.encode_prompt("white petals"), states.flatten(1))
    images = pipeline("white petals with red edges", generator=seeded(), output_type="np").images
    pipeline.save_pretrained(tmp_path / "saved")
    again = GanClsPipeline.from_pretrained(tmp_path / "saved")("white petals with red edges", generator=seeded(), output_type="np").images
    np.testing.assert_array_equal(images, again)
    # Without attention, a generator of the pooled width refuses the position states' width, and the reverse.
    with pytest.raises(CheckpointError, match="embeddings but the generator expects"):
        GanClsPipeline(tokenizer=pooled.tokenizer, text_encoder=pooled.text_encoder, generator=GanClsGenerator(text_embed_dim=config.embed_dim, ngf=8))
