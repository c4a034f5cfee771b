import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from t2i import CheckpointError, GanClsGenerator, GanClsPipeline, ModelCardInfo
from t2i.hub import render_model_card


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pull_pipeline_from_loopback_hub(tiny_pipeline, loopback_hub, tmp_path):
    assert os.environ["HF_ENDPOINT"] == loopback_hub.endpoint
    tiny_pipeline.save_pretrained(tmp_path / "saved")
    loopback_hub.publish(tmp_path / "saved", "t2i-tests/tiny-pipeline")

    pulled = GanClsPipeline.from_pretrained("t2i-tests/tiny-pipeline")

    expected = tiny_pipeline("a red flower", generator=seeded(1), output_type="pt").images
    assert torch.equal(pulled("a red flower", generator=seeded(1), output_type="pt").images, expected)
    snapshot = Path(pulled.generator.config._name_or_path)
    assert Path(os.environ["HF_HOME"]) in snapshot.parents  # it really went through the Hub download cache


# A fresh interpreter in which t2i cannot be imported: only diffusers and the code the repo carries.
PLAIN_DIFFUSERS = """
import sys
sys.modules["t2i"] = None
import numpy as np, torch
from diffusers import DiffusionPipeline
# revision="main": olah's offline mirror answers only the revisioned metadata route (its /api/models/{repo}
# reads an upstream cache that a mirror does not have); the Hub answers both.
pipeline = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=sys.argv[2] == "trust", revision="main")
images = pipeline("a red flower", generator=torch.Generator().manual_seed(1), output_type="np").images
np.save(sys.argv[3], images)
print(type(pipeline).__module__, type(pipeline.generator).__name__)
pipeline.save_pretrained(sys.argv[4])  # a folder t2i can load
try:
    pipeline.save_with_model_card(sys.argv[4] + "-card", None)
except RuntimeError as error:
    print("refused:", error)
"""


def test_plain_diffusers_loads_a_published_repo_with_its_remote_code(tiny_pipeline, loopback_hub, tmp_path):
    """Newcomer issue, item 6: the card's `DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)` works."""
    repo = "t2i-tests/remote-code"
    tiny_pipeline.save_with_model_card(tmp_path / "saved", ModelCardInfo(model_id=repo))
    loopback_hub.publish(tmp_path / "saved", repo)
    card = (tmp_path / "saved" / "README.md").read_text()
    assert f'DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)' in card

    def plain_diffusers(trust: bool) -> subprocess.CompletedProcess:
        args = [sys.executable, "-c", PLAIN_DIFFUSERS, repo, "trust" if trust else "no", str(tmp_path / "images.npy"),
                str(tmp_path / "resaved")]
        return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # outside the checkout

    refused = plain_diffusers(trust=False)
    assert refused.returncode != 0 and "trust_remote_code=True" in refused.stderr
    loaded = plain_diffusers(trust=True)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "diffusers_modules" in loaded.stdout and "GanClsGenerator" in loaded.stdout
    assert "Expected types" not in loaded.stderr
    expected = tiny_pipeline("a red flower", generator=seeded(1), output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy", allow_pickle=False), expected)

    # Publishing needs t2i (its source and card template), said before anything is written; save_pretrained works.
    assert "refused: save_with_model_card and push_to_hub need the t2i package" in loaded.stdout
    assert not (tmp_path / "resaved-card").exists()

    # t2i itself reads the repo, and what the remote-code pipeline saved, with its own classes, never the repo's code.
    for source in (repo, tmp_path / "resaved"):
        pulled = GanClsPipeline.from_pretrained(source)
        assert type(pulled.generator) is GanClsGenerator and type(pulled).__module__ == "t2i.pipeline"
        assert np.array_equal(pulled("a red flower", generator=seeded(1), output_type="np").images, expected)
    assert "_name_or_path" not in json.loads((tmp_path / "resaved" / "model_index.json").read_text())


def test_from_pretrained_arguments(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "saved")
    half = GanClsPipeline.from_pretrained(tmp_path / "saved", dtype=torch.bfloat16)
    assert half.generator.dtype == half.text_encoder.dtype == torch.bfloat16
    assert GanClsPipeline.from_pretrained(tmp_path / "saved", torch_dtype=torch.bfloat16).generator.dtype == torch.bfloat16
    GanClsPipeline.from_pretrained(tmp_path / "saved", use_safetensors=True)
    # Weights stored in float16 (to halve the files) compute in float32 unless asked: transformers alone would keep
    # the text encoder in the stored dtype.
    half.to(torch.float16).save_pretrained(tmp_path / "float16")
    stored = GanClsPipeline.from_pretrained(tmp_path / "float16")
    assert stored.generator.dtype == stored.text_encoder.dtype == torch.float32
    with pytest.raises(TypeError, match="must be a torch.dtype"):
        GanClsPipeline.from_pretrained(tmp_path / "saved", torch_dtype="bfloat16")
    with pytest.raises(ValueError, match="safetensors only"):
        GanClsPipeline.from_pretrained(tmp_path / "saved", use_safetensors=False)
    with pytest.raises(TypeError, match="never runs a folder's code"):
        GanClsPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    with pytest.raises(TypeError, match=r"unexpected arguments \['foo'\]"):
        GanClsPipeline.from_pretrained(tmp_path / "saved", foo=1)


def test_pull_single_components_from_loopback_hub(tiny_pipeline, loopback_hub, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "saved")
    loopback_hub.publish(tmp_path / "saved", "t2i-tests/components")

    generator = GanClsGenerator.from_pretrained("t2i-tests/components", subfolder="generator")

    for name, tensor in tiny_pipeline.generator.state_dict().items():
        assert torch.equal(generator.state_dict()[name], tensor)


def test_a_home_relative_model_folder_is_expanded(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(Path(__file__).resolve().parents[1] / "pretrained", tmp_path / "model")
    assert GanClsPipeline.from_pretrained("~/model").generator.config.resolution == 64


def test_missing_repo_and_path_are_named(loopback_hub):
    with pytest.raises(FileNotFoundError, match="'t2i-tests/does-not-exist' is neither a local folder nor a Hub repo"):
        GanClsPipeline.from_pretrained("t2i-tests/does-not-exist")
    for path in ("/no/such/folder", "./no_such_folder", "~/no_such_folder", "runs/out/no_such_folder", "C:\\models\\flowers"):
        with pytest.raises(FileNotFoundError, match="no such model folder .*not a Hub repo id"):  # said without asking the Hub
            GanClsPipeline.from_pretrained(path)


def test_folder_without_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no model_index.json"):
        GanClsPipeline.from_pretrained(tmp_path / "empty")


class _Tripwire:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("component, pickle_name", [("generator", "diffusion_pytorch_model.bin"), ("text_encoder", "pytorch_model.bin")])
def test_pickle_checkpoints_are_refused_unopened(tiny_pipeline, tmp_path, component, pickle_name):
    tiny_pipeline.save_pretrained(tmp_path)
    marker = tmp_path / "unpickled"
    for weights in (tmp_path / component).glob("*.safetensors"):
        weights.unlink()
    (tmp_path / component / pickle_name).write_bytes(pickle.dumps(_Tripwire(marker)))

    with pytest.raises(CheckpointError, match=rf"{component}/{pickle_name}: pickle checkpoint and no .safetensors"):
        GanClsPipeline.from_pretrained(tmp_path)
    if component == "generator":
        with pytest.raises(CheckpointError, match="never unpickles"):
            GanClsGenerator.from_pretrained(tmp_path / component)
    assert not marker.exists()


def test_truncated_safetensors_is_named(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    weights = tmp_path / "generator" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"generator/diffusion_pytorch_model.safetensors: truncated or corrupt"):
        GanClsPipeline.from_pretrained(tmp_path)


def test_config_that_disagrees_with_weights(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    config_file = tmp_path / "generator" / "config.json"
    config = json.loads(config_file.read_text())
    config["ngf"] = 16
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors: tensor 'net.0.weight' has shape \[1024, 228\].*generator/config.json"):
        GanClsPipeline.from_pretrained(tmp_path)


def test_text_encoder_config_that_disagrees_with_weights(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    config_file = tmp_path / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["embed_dim"] = 48
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"text_encoder/model.safetensors: tensor 'projection\.(weight|bias)'.*needs \[48"):
        GanClsPipeline.from_pretrained(tmp_path)


def _card_info(**overrides):
    info = dict(
        model_id="someone/gan-cls-flowers",
        dataset_name="t2i/synthetic-captioned-flowers",
        dataset_description="8,189 procedurally rendered flowers with 10 captions each.",
        synthetic_data=True,
        training_command="accelerate launch train_accelerate.py --dataset_name synth --output_dir out",
        training_steps=12000,
        train_batch_size=64,
        wall_time_hours=1.5,
        hardware="2 CPU cores",
        metrics={"petal_color_accuracy": 0.91, "frechet_distance": 12.5},
        evaluation_protocol="Oracle accuracy on the 20 unseen test classes.",
    )
    return ModelCardInfo(**{**info, **overrides})


def test_model_card_names_the_objective_by_its_tags():
    assert "trained with GAN-INT-CLS (Reed" in render_model_card(_card_info()).text  # the default tags: Reed's objective
    gan_cls = render_model_card(_card_info(tags=["text-to-image", "gan", "gan-cls", "t2i"]))
    assert "trained with GAN-CLS (Reed" in gan_cls.text and "gan-int-cls" not in gan_cls.data.tags


def test_model_card_holds_real_fields(tmp_path):
    card = render_model_card(_card_info(resolution=64, text_encoder="char-CNN-RNN"))
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")

    assert loaded.data.library_name == "diffusers"
    assert loaded.data.pipeline_tag == "text-to-image"
    assert loaded.data.license == "apache-2.0"
    assert loaded.data.datasets == ["t2i/synthetic-captioned-flowers"]
    assert {"text-to-image", "gan-cls"} <= set(loaded.data.tags)
    results = {r.metric_type: r.metric_value for r in loaded.data.eval_results}
    assert results == {"petal_color_accuracy": 0.91, "frechet_distance": 12.5}
    for text in ["accelerate launch train_accelerate.py --dataset_name synth", "| steps | 12000 |", "| wall time | 1.50 h |",
                 "| petal_color_accuracy | 0.91 |", "not on Oxford-102", "char-CNN-RNN", 'from_pretrained("someone/gan-cls-flowers")']:
        assert text in loaded.text


def test_model_card_without_training_facts_makes_no_claim():
    card = render_model_card(ModelCardInfo(model_id="someone/untrained"))
    assert "Not evaluated yet" in card.text and "Training command: not recorded." in card.text
    assert card.data.eval_results is None and "Oxford-102" not in card.text


def test_push_to_hub_uploads_exactly_the_pipeline_and_card(tiny_pipeline, monkeypatch):
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        uploads.append(dict(repo_id=repo_id, files=sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
                            card=ModelCard.load(folder / "README.md"), pipeline=GanClsPipeline.from_pretrained(folder), **kwargs))
        return f"{repo_id}@commit"

    # There is no writable Hub here: stop at the two network calls and inspect what they were given.
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    assert tiny_pipeline.push_to_hub("someone/gan-cls-flowers", model_card=_card_info()) == "someone/gan-cls-flowers@commit"

    (upload,) = uploads
    assert upload["files"] == [
        "README.md", "generator/config.json", "generator/diffusion_pytorch_model.safetensors", "generator/models.py",
        "model_index.json", "pipeline.py", "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder/text_encoders.py", "tokenizer/text_encoders.py", "tokenizer/tokenizer_config.json",
    ]  # the weights, configs and card, and the remote code for plain diffusers
    assert upload["card"].data.datasets == ["t2i/synthetic-captioned-flowers"]
    assert "| resolution | 64 |" in upload["card"].text and "CharCnnRnnEncoder" in upload["card"].text
    assert upload["commit_message"] == "Upload GanClsPipeline"
    expected = tiny_pipeline("a red flower", generator=seeded(2), output_type="pt").images
    assert torch.equal(upload["pipeline"]("a red flower", generator=seeded(2), output_type="pt").images, expected)


# ----------------------------------------------------------------------------------------------------------------
# Missing, extra or renamed tensors (Hardening, item 1): refused by name, never loaded as random weights.


def _saved_components(root: Path) -> dict[str, tuple[Path, object]]:
    """Every kind of component t2i loads, saved: {name: (weights file, loader)}."""
    from t2i.evaluation import AttributeOracle, load_oracle
    from t2i.text_pretraining.joint_embedding import JOINT_IMAGE_ENCODER_FOLDER, JointImageEncoder, load_joint_image_encoder

    from conftest import make_tiny_pipeline

    make_tiny_pipeline().save_pretrained(root / "pipeline")
    torch.manual_seed(0)
    JointImageEncoder(embed_dim=32, channels=(8, 8, 8, 8)).save_pretrained(root / "pipeline" / JOINT_IMAGE_ENCODER_FOLDER)
    AttributeOracle(channels=(8, 8, 8, 8), feature_dim=16).save_pretrained(root / "oracle")
    return {
        "generator": (root / "pipeline" / "generator" / "diffusion_pytorch_model.safetensors", lambda: GanClsPipeline.from_pretrained(root / "pipeline")),
        "text_encoder": (root / "pipeline" / "text_encoder" / "model.safetensors", lambda: GanClsPipeline.from_pretrained(root / "pipeline")),
        "joint_image_encoder": (root / "pipeline" / JOINT_IMAGE_ENCODER_FOLDER / "diffusion_pytorch_model.safetensors",
                                lambda: load_joint_image_encoder(root / "pipeline")),
        "oracle": (root / "oracle" / "diffusion_pytorch_model.safetensors", lambda: load_oracle(root / "oracle")[0]),
    }


COMPONENTS = ["generator", "text_encoder", "joint_image_encoder", "oracle"]


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("damage", ["missing", "extra", "renamed"])
def test_a_component_with_other_tensor_names_is_refused_by_name(component, damage, tmp_path):
    from safetensors.torch import load_file, save_file

    weights, load = _saved_components(tmp_path)[component]
    state = load_file(weights)
    first = sorted(state)[0]
    if damage == "missing":
        state.pop(first)
    elif damage == "extra":
        state["surplus.weight"] = torch.zeros(2)
    else:
        state[first.replace(".", "_renamed.", 1)] = state.pop(first)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="stored tensors do not match") as error:
        load()
    message = str(error.value)
    assert str(weights) in message
    assert (first in message) if damage != "extra" else ("surplus.weight" in message)


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_a_wrapped_model_saved_as_is_loads_without_its_prefix(component, prefix, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    weights, load = _saved_components(tmp_path)[component]
    original = load_file(weights)
    save_file({prefix + key: tensor for key, tensor in original.items()}, weights)
    with caplog.at_level("WARNING"):
        loaded = load()
    assert f"every tensor name starts with {prefix!r}" in caplog.text
    module = {"generator": lambda m: m.generator, "text_encoder": lambda m: m.text_encoder}.get(component, lambda m: m)(loaded)
    state = module.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)
