"""Shared fixtures. Everything here is offline: the only "Hub" is an olah server on loopback."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports huggingface_hub (it reads these once): every Hub call of the test run goes to the
# loopback server below, never to the internet, and uses a throwaway cache.
_HUB_PORT = None
with socket.socket() as _sock:
    _sock.bind(("127.0.0.1", 0))
    _HUB_PORT = _sock.getsockname()[1]
_TEST_HOME = tempfile.mkdtemp(prefix="t2i-tests-")
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_HUB_PORT}"
os.environ["HF_HOME"] = os.path.join(_TEST_HOME, "hf_home")
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Test models are tiny: one thread each avoids oversubscribing the 2 cores when tests launch training processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from t2i import GanClsPipeline  # noqa: E402
from t2i.serving import TINY_TEXT_ENCODER_CONFIG, build_random_pipeline  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_tiny_pipeline(seed: int = 0, resolution: int = 64) -> GanClsPipeline:
    """A seeded random pipeline small enough for unit tests (tiny char-CNN-RNN, ngf = 8)."""
    return build_random_pipeline(seed=seed, resolution=resolution)


@pytest.fixture
def tiny_pipeline() -> GanClsPipeline:
    return make_tiny_pipeline()


class LoopbackHub:
    """An olah server in offline-mirror mode: each published repo is a git repo under ``mirrors/models/``."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.mirrors = root / "mirrors"
        (self.mirrors / "models").mkdir(parents=True)
        config = root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {port}\n'
            f'repos-path = "{root / "repos"}"\nmirrors-path = ["{self.mirrors}"]\n'
            f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
            "[accessibility]\noffline = true\n"
        )
        olah_cli = Path(sys.executable).parent / "olah-cli"
        self.log = open(root / "olah.log", "w")
        self.process = subprocess.Popen(
            [str(olah_cli), "-c", str(config), "--log-path", str(root / "logs")],
            cwd=root, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited early: {(root / 'olah.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("olah did not start within 60 s")

    def publish(self, folder: Path, repo_id: str, repo_type: str = "model") -> None:
        """Commit ``folder``'s files as the ``main`` branch of repo ``repo_id`` (a "model" or "dataset")."""
        repo = self.mirrors / f"{repo_type}s" / repo_id
        repo.mkdir(parents=True)
        git = ["git", "-c", "user.name=t2i-tests", "-c", "user.email=tests@t2i.invalid", "-C", str(repo)]
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        subprocess.run(["cp", "-r", f"{folder}/.", str(repo)], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "upload"], check=True)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def loopback_hub(tmp_path_factory) -> LoopbackHub:
    hub = LoopbackHub(tmp_path_factory.mktemp("hub"), _HUB_PORT)
    yield hub
    hub.close()


@pytest.fixture(scope="session")
def tiny_synthetic_dataset(tmp_path_factory) -> Path:
    """200 synthetic captioned flowers at 64 px, as a parquet folder with `train` and `test` splits."""
    from t2i.datasets import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic") / "flowers"
    return generate_synthetic_dataset(out, num_images=200, seed=0, resolution=64, num_proc=1)


# ----------------------------------------------------------------------------------------------------------------
# The Gradio app (tests/test_app*.py): one real server for the whole session, on a free loopback port.

APP_MODEL_ID = "t2i-tests/app-tiny"
APP_WIDGET_PROMPTS = ["a flower with many red petals", "a flower with five white petals"]


def free_port() -> int:
    """A TCP port that is free on loopback now (the OS may hand it out again later, but not in practice here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def app_model_folder(tmp_path_factory) -> Path:
    """A saved tiny pipeline whose model card states synthetic training data and lists two example prompts."""
    from huggingface_hub import ModelCard

    from t2i import ModelCardInfo

    folder = tmp_path_factory.mktemp("app-model") / "app-tiny"
    info = ModelCardInfo(model_id=APP_MODEL_ID, dataset_name="t2i-synthetic-flowers", synthetic_data=True)
    make_tiny_pipeline().save_with_model_card(folder, info)
    card = ModelCard.load(folder / "README.md")
    card.data.widget = [{"text": prompt} for prompt in APP_WIDGET_PROMPTS]
    card.save(folder / "README.md")
    return folder


@pytest.fixture(scope="session")
def app_url(app_model_folder) -> str:
    """URL of app.py started in this process with ``--model <app_model_folder>``."""
    import app

    port = free_port()
    argv = ["--model", str(app_model_folder), "--host", "127.0.0.1", "--port", str(port)]
    demo = app.main(argv, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
