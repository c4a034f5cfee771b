"""The Gradio app end to end: real servers on loopback, driven through gradio_client (the browser is in
test_app_browser.py), plus the input checks and model loading behind them."""

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import APP_MODEL_ID, APP_WIDGET_PROMPTS, free_port, make_tiny_pipeline
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

import app
from t2i.serving import (
    EXAMPLE_PROMPTS,
    App,
    InputError,
    LoadedModel,
    check_int,
    clean_prompt,
    load_model,
)
from t2i.text_encoders import CharTokenizer

# Gradio's queue calls pandas in a way pandas 3 deprecates; nothing this project can act on.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = "this flower has five pointed purple petals and a yellow center"
LONG_PROMPT = "a flower with many thin white petals and a large yellow center " * 10


@pytest.fixture(scope="module")
def client(app_url) -> Client:
    return Client(app_url, verbose=False)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def page_config(url: str) -> str:
    """The app's config (every component's initial value) as one string."""
    return json.dumps(httpx.get(f"{url}config", timeout=30).json(), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------------
# Input checks, without a server


@pytest.mark.parametrize(
    "prompt, expected, notice",
    [
        ("  a  red\tflower \n", "a red flower", None),
        ("a red\x00 flower\x07", "a red flower", "Read 2 control or zero-width space character(s) as spaces"),
        ("a red flower\u202e\u200d", "a red flower", "Removed 2 invisible formatting"),  # right-to-left override, zero-width joiner
        ("red\x00petals\x1bwith\x7fa\x9fdisc", "red petals with a disc", "Read 4 control"),  # a control character separates
        ("red\u200bpetals", "red petals", "Read 1 control or zero-width space"),  # so does a zero-width space
        ("pe\u200ctals\u200dof\u2066red", "petalsofred", "Removed 3 invisible formatting"),  # a format character is inside a word
        ("red " + "".join(map(chr, range(0x5d0, 0x5ea))), "red", "Ignored characters the model cannot read: א ב ג ד ה ו ז ח ט י ך כ ל ם מ ן נ ס ע ף and 6 more"),
        ("a red flower 🌸", "a red flower", "Ignored characters the model cannot read: 🌸"),
        ("a red flower פרח", "a red flower", "Ignored characters"),
        ("a red \ue000 flower ❤\ufe0f", "a red flower", "Ignored characters the model cannot read: U+E000 ❤ U+FE0F"),  # in text order; invisible ones by code point
        ("rose وردة", "rose", "Ignored characters the model cannot read: و ر د ة"),  # as typed, not by code point
        ("a crème flower with café-brown petals", "a creme flower with cafe-brown petals", "Read accented or special letters as plain ones: è→e é→e"),
        ("ａ ｒｅｄ ﬂower", "a red flower", "Read accented or special letters"),  # full-width letters, the fl ligature
        (LONG_PROMPT, LONG_PROMPT.strip()[:201].rstrip(), "cut to 201 characters"),
        ("a red flower " * 100_000, ("a red flower " * 16)[:201].rstrip(), "cut to 201 characters"),
        # Only what the model reads counts toward the cut: a caption after filler the cleaning drops is read.
        (" " * 3000 + "a red flower", "a red flower", None),
        ("\u200b" * 2500 + "a red flower", "a red flower", "Read 2500 control or zero-width space"),
        ("🌸" * 2500 + "a red flower", "a red flower", "Ignored characters the model cannot read: 🌸"),
        ("cafe\u0301\u0301\u0301 flower", "cafe flower", "é→e (and dropped 2 lone accent mark(s))"),  # counted, not told apart
        # Typographic dashes, quotes and × are read as their ASCII forms, not dropped (which joined the words around them).
        ("red—white petals", "red-white petals", "—→-"),
        ("the flower’s “petals”", "the flower's \"petals\"", "’→'"),
        ("a 5×3 cm bloom", "a 5x3 cm bloom", "×→x"),
    ],
)
def test_clean_prompt_returns_what_the_model_reads(prompt, expected, notice):
    text, notices = clean_prompt(prompt, CharTokenizer())
    assert text == expected
    assert (notice is None and not notices) or any(notice in n for n in notices)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("", "the prompt is empty"),
        (" \n\t ", "the prompt is empty"),
        ("\x00\x1b", "the prompt is empty"),
        ("🌸🌼", "no characters this model can read"),
        ("זהב אדום", "no characters this model can read"),
        (None, "the prompt must be text"),
        ("🌸" * 200_000 + "a red flower", "no characters this model can read in its first 100,000 characters"),
        (" " * 200_000 + "a red flower", "the prompt is empty in its first 100,000 characters"),
    ],
)
def test_clean_prompt_refuses_unreadable_prompts(prompt, message):
    with pytest.raises(InputError, match=message):
        clean_prompt(prompt, CharTokenizer())


@pytest.mark.parametrize("value, expected", [(1, 1), (16, 16), (4.0, 4), ("7", 7)])
def test_check_int_accepts_whole_numbers_in_range(value, expected):
    assert check_int(value, "n", 1, 16) == expected


@pytest.mark.parametrize("value", [0, 17, 2.5, -1, "four", None, "", True, [4], float("nan"), float("inf"), 10**400])
def test_check_int_refuses_everything_else(value):
    with pytest.raises(InputError, match="n must be a whole number from 1 to 16"):
        check_int(value, "n", 1, 16)


@pytest.mark.parametrize("value, shown", [(1e23, "got 100000000000000000000000."), (-3.0, "got -3."), (2.5, "got 2.5."),
                                          (10**20, "got 100000000000000000000."), ("1e23", "got '1e23'."), (1e300, "got 1e+300."),
                                          (np.float64(1e23), "got 100000000000000000000000.")])
def test_check_int_shows_a_refused_number_as_it_was_typed(value, shown):
    # A browser's number field sends a long whole number as a float, which Python prints as 1e+23.
    with pytest.raises(InputError) as refused:
        check_int(value, "seed", 0, 2**32 - 1)
    assert str(refused.value).endswith(shown)


# ---------------------------------------------------------------------------------------------------------------
# Model loading, without a server


def test_load_model_reads_the_model_card(app_model_folder):
    model = load_model(str(app_model_folder))
    assert model.notice is None
    assert model.name == "app-tiny" and "local folder" in model.source
    assert "t2i-synthetic-flowers" in model.trained_on and "synthetic" in model.trained_on
    assert model.examples == APP_WIDGET_PROMPTS


def test_load_model_falls_back_and_says_why(tmp_path):
    pickled = tmp_path / "pickled"
    make_tiny_pipeline().save_pretrained(pickled)
    for weights in pickled.glob("*/*.safetensors"):  # a folder with only pickle checkpoints
        weights.rename(weights.with_suffix(".bin"))
    model = load_model(str(pickled))
    assert "Could not load" in model.notice and "pickle" in model.notice
    assert model.source == "built at start-up" and model.examples == list(EXAMPLE_PROMPTS)

    model = load_model(None, default_folder=tmp_path / "pretrained")
    assert "No trained model yet" in model.notice
    assert "random weights" in model.description()


def test_model_option_and_environment(monkeypatch):
    monkeypatch.setenv("T2I_MODEL", "user/from-env")
    assert app.parse_args([]).model == "user/from-env"
    assert app.parse_args(["--model", "user/from-flag"]).model == "user/from-flag"


def test_concurrent_requests_share_a_forward_pass_and_get_their_own_images():
    """Requests that arrive while the model is busy run as one batch, with the same images as alone."""
    service = App(LoadedModel(make_tiny_pipeline(), "tiny", "test", "nothing"))
    requests = [("a flower with red petals", 1, 0), ("a blue flower", 3, 1), ("white petals", 16, 2), ("pink", 2, 3)]
    alone = [service.generate(*request).images for request in requests]

    batch_sizes = []
    run_batch = service._batcher._run
    service._batcher._run = lambda jobs: (batch_sizes.append(len(jobs)), run_batch(jobs))
    results = [None] * len(requests)
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, service.generate(*requests[i]).images))
        for i in range(len(requests))
    ]
    with service._batcher._model_lock:  # the model is "busy": every request queues up behind it
        for thread in threads:
            thread.start()
        while len(service._batcher._pending) < len(requests):
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=30)
    assert batch_sizes == [len(requests)]
    for together, single in zip(results, alone):
        assert len(together) == len(single)
        for a, b in zip(together, single):  # batch size may change the last float bit, never a visible pixel
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


# ---------------------------------------------------------------------------------------------------------------
# The running app, through gradio_client


def test_generate_endpoint(client, app_url):
    images, summary = client.predict(PROMPT, 3, 7, api_name="/generate")
    assert len(images) == 3 and "seed **7**" in summary
    expected = make_tiny_pipeline()(PROMPT, num_images_per_prompt=3, generator=torch.Generator().manual_seed(7)).images
    for item, want in zip(images, expected):
        assert Image.open(item["image"]).format == "PNG"
        np.testing.assert_array_equal(pixels(item["image"]), np.asarray(want))  # native size, exactly the pipeline's
    metadata = json.loads(Image.open(images[0]["image"]).info["t2i"])
    assert metadata["prompt"] == PROMPT and metadata["seed"] == 7 and metadata["model"] == "app-tiny"

    again, _ = client.predict(PROMPT, 3, 7, api_name="/generate")
    other, _ = client.predict(PROMPT, 3, 8, api_name="/generate")
    assert np.array_equal(pixels(again[0]["image"]), pixels(images[0]["image"]))
    assert not np.array_equal(pixels(other[0]["image"]), pixels(images[0]["image"]))


def test_interpolate_endpoints(client):
    frames, strip_png, strip_gif, summary = client.predict(PROMPT, "white petals", 5, 3, api_name="/interpolate")
    assert len(frames) == 5 and "seed **3**" in summary
    strip = Image.open(strip_png)
    assert strip.size == (5 * 64, 64)
    np.testing.assert_array_equal(np.asarray(strip)[:, :64], pixels(frames[0]["image"]))
    assert Image.open(strip_gif).n_frames == 8  # there and back: 5 + 3

    frames, strip_png, strip_gif, _ = client.predict(PROMPT, 11, 12, 4, api_name="/interpolate_noise")
    assert len(frames) == 4 and Image.open(strip_png).size == (4 * 64, 64) and Image.open(strip_gif).n_frames == 6
    # The ends are what Generate draws for each seed with one image (a batch of several draws other noise).
    for end, seed in [(frames[0], 11), (frames[-1], 12)]:
        single, _ = client.predict(PROMPT, 1, seed, api_name="/generate")
        assert np.abs(pixels(end["image"]).astype(int) - pixels(single[0]["image"])).max() <= 2


GENERATE_OK = (PROMPT, 2, 0)


@pytest.mark.parametrize(
    "endpoint, args, message",
    [
        ("/generate", ("", 2, 0), "the prompt is empty"),
        ("/generate", ("  \t\n ", 2, 0), "the prompt is empty"),
        ("/generate", ("\x00\x1b\x07", 2, 0), "the prompt is empty"),
        ("/generate", ("🌸🌼🌺", 2, 0), "no characters this model can read"),
        ("/generate", ("זהב אדום", 2, 0), "no characters this model can read"),
        ("/generate", (PROMPT, 0, 0), "number of images must be a whole number from 1 to 16"),
        ("/generate", (PROMPT, 17, 0), "number of images must be a whole number from 1 to 16"),
        ("/generate", (PROMPT, 2.5, 0), "number of images must be a whole number from 1 to 16"),
        ("/generate", (PROMPT, None, 0), "number of images must be a whole number from 1 to 16"),
        ("/generate", (PROMPT, 2, -1), "seed must be a whole number from 0 to 4294967295"),
        ("/generate", (PROMPT, 2, 2**32), "seed must be a whole number from 0 to 4294967295"),
        ("/generate", (PROMPT, 2, 10**30), "seed must be a whole number from 0 to 4294967295"),
        ("/generate", (PROMPT, 2, "lucky"), "seed must be a whole number from 0 to 4294967295"),
        ("/interpolate", (PROMPT, "", 4, 0), "prompt B: the prompt is empty"),
        ("/interpolate", ("玫瑰花", "  ", 4, 0), "prompt A: the prompt has no characters .* prompt B: the prompt is empty"),  # both at once
        ("/interpolate", (PROMPT, PROMPT, 1, 0), "number of steps must be a whole number from 2 to 16"),
        ("/interpolate", (PROMPT, PROMPT, 17, 0), "number of steps must be a whole number from 2 to 16"),
        ("/interpolate", (PROMPT, PROMPT, 4, -5), "seed must be a whole number"),
        ("/interpolate_noise", ("🌸", 0, 1, 4), "no characters this model can read"),
        ("/interpolate_noise", (PROMPT, 0, -1, 4), "seed B must be a whole number"),
        ("/interpolate_noise", (PROMPT, 0, 1, 99), "number of steps must be a whole number from 2 to 16"),
    ],
)
def test_bad_input_is_a_clean_error(client, endpoint, args, message):
    with pytest.raises(AppError, match=message) as error:
        client.predict(*args, api_name=endpoint)
    assert "Traceback" not in str(error.value)


@pytest.mark.parametrize(
    "prompt, notice",
    [
        (LONG_PROMPT, "The prompt was cut to 201 characters"),
        ("a red\x00 flower\u202e", "Read 1 control or zero-width space character(s) as spaces"),
        ("a red\x00 flower\u202e", "Removed 1 invisible formatting character(s)"),
        ("a red flower 🌸", "Ignored characters the model cannot read: 🌸"),
        ("a red flower פרח", "Ignored characters the model cannot read"),
    ],
)
def test_odd_prompts_are_cleaned_with_a_notice(client, prompt, notice):
    images, summary = client.predict(prompt, 1, 0, api_name="/generate")
    assert len(images) == 1 and notice in summary


MARKUP_PROMPT = "**bold** [a link](http://example.com) <img src=x onerror=alert(1)> $$x^2$$ `code` _petals_"


def test_summaries_quote_prompts_as_typed_never_as_markup(client):
    """Every summary quotes the prompt with Markdown and HTML escaped (how Chromium shows it: test_app_browser.py)."""
    escaped = r"\*\*bold\*\* \[a link\](http\://example.com) &lt;img src=x onerror=alert(1)&gt; \$\$x^2\$\$ \`code\` \_petals\_"
    _, summary = client.predict(MARKUP_PROMPT + " 🌸", 1, 0, api_name="/generate")
    assert f"“{escaped}”" in summary and "<img" not in summary
    assert "Ignored characters the model cannot read: 🌸" in summary  # notices are escaped too, and still readable
    *_, summary = client.predict(MARKUP_PROMPT, "<b>red</b>", 2, 0, api_name="/interpolate")
    assert f"from “{escaped}” to “&lt;b&gt;red&lt;/b&gt;”" in summary
    *_, summary = client.predict(MARKUP_PROMPT, 0, 1, 2, api_name="/interpolate_noise")
    assert f"for “{escaped}”" in summary


def test_a_strip_between_equal_ends_says_its_frames_are_equal(client):
    frames, *_, summary = client.predict(PROMPT, 5, 5, 3, api_name="/interpolate_noise")
    assert "Seed A and seed B are both 5, so every frame is the same image" in summary
    assert np.array_equal(pixels(frames[0]["image"]), pixels(frames[-1]["image"]))
    *_, summary = client.predict(PROMPT, 5, 6, 3, api_name="/interpolate_noise")
    assert "Seed A and seed B" not in summary
    # Likewise two prompts that read the same (here after the cleaning: case and spacing).
    frames, *_, summary = client.predict(PROMPT, "  " + PROMPT.upper(), 3, 0, api_name="/interpolate")
    assert "Prompt A and prompt B read the same, so every frame is the same image" in summary
    assert np.array_equal(pixels(frames[0]["image"]), pixels(frames[-1]["image"]))


def test_app_shows_model_provenance(app_url):
    config = page_config(app_url)
    assert "app-tiny" in config and "local folder" in config
    assert "t2i-synthetic-flowers" in config and "not on Oxford-102" in config
    assert APP_WIDGET_PROMPTS[0] in config  # examples come from the model card


def test_start_up_objects_are_kept_out_of_full_collections(app_url):
    """app.main freezes what start-up loaded (PyTorch, Gradio, the model), so that a full garbage collection under
    load walks only what requests create instead of stalling every request in flight."""
    assert gc.get_freeze_count() > 100_000


def test_missing_model_still_starts_and_says_why(loopback_hub):
    demo = app.create_app("t2i-tests/no-such-model")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        config = page_config(url)
        assert "Could not load" in config and "t2i-tests/no-such-model" in config and "untrained stand-in" in config
        client = Client(url, verbose=False)
        images, summary = client.predict(PROMPT, 2, 0, api_name="/generate")
        assert len(images) == 2
        # API clients never see the page's header: every result says the model is a stand-in, and why.
        assert "**Not the requested model.** Could not load `t2i-tests/no-such-model`" in summary
        *_, summary = client.predict(PROMPT, "red", 2, 0, api_name="/interpolate")
        assert "Not the requested model" in summary
    finally:
        demo.close()


def test_app_py_loads_a_model_from_the_hub(loopback_hub, app_model_folder, tmp_path):
    """`python app.py` as a user runs it, with the model named by T2I_MODEL and fetched from the (loopback) Hub."""
    loopback_hub.publish(app_model_folder, APP_MODEL_ID)
    port = free_port()
    (tmp_path / "tmp").mkdir()  # the app's output folder is made here
    env = {**os.environ, "T2I_MODEL": APP_MODEL_ID, "HF_HOME": str(tmp_path / "hf_home"), "TMPDIR": str(tmp_path / "tmp")}
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "app.py did not start within 120 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.3)
        url = f"http://127.0.0.1:{port}/"
        config = page_config(url)
        assert APP_MODEL_ID in config and "Hugging Face Hub" in config and "Could not load" not in config
        assert "t2i-synthetic-flowers" in config  # the model card came from the Hub too
        images, _ = Client(url, verbose=False).predict(PROMPT, 2, 7, api_name="/generate")
        expected = make_tiny_pipeline()(PROMPT, num_images_per_prompt=2, generator=torch.Generator().manual_seed(7))
        np.testing.assert_array_equal(pixels(images[1]["image"]), np.asarray(expected.images[1]))
        outputs = list((tmp_path / "tmp").glob("t2i-app-*"))
        assert len(outputs) == 1 and list(outputs[0].rglob("*.png"))
        # Stopped as docker stop and systemd stop it, the app closes and deletes its output folder.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (tmp_path / "app.log").read_text()[-3000:]
        assert not outputs[0].exists()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_outputs_are_kept_for_their_time_then_deleted():
    """A request's files stay downloadable for ``keep_outputs_seconds``; older request folders are removed."""
    kept = App(LoadedModel(make_tiny_pipeline(), "tiny", "test", "nothing"))
    first = kept.generate(PROMPT, 1, 0).files[0]
    kept.generate(PROMPT, 1, 1)
    assert Path(first).is_file() and Path(first).is_relative_to(kept.output_folder)

    expiring = App(LoadedModel(make_tiny_pipeline(), "tiny", "test", "nothing"), keep_outputs_seconds=0.05)
    first = expiring.generate(PROMPT, 1, 0).files[0]
    time.sleep(0.1)
    second = expiring.generate(PROMPT, 1, 1).files[0]
    assert not Path(first).exists() and Path(second).is_file()


def test_outputs_are_served_in_place_and_checked_first(tmp_path):
    """The app's folder is a static path (its files are returned without a copy into Gradio's cache), and it is
    the first one Gradio compares a file against, so a request's path checks stop at the first comparison."""
    import gradio.utils
    from gradio.data_classes import _StaticFiles

    image = tmp_path / "request" / "t2i-seed0-01.png"
    image.parent.mkdir()
    image.write_bytes(b"png")
    assert not gradio.utils.is_static_file(str(image))
    app.serve_in_place(tmp_path)
    try:
        assert gradio.utils.is_static_file(str(image))
        assert _StaticFiles.all_paths[0] == tmp_path.resolve()
        assert not gradio.utils.is_static_file(str(tmp_path.parent / "elsewhere.png"))
    finally:
        _StaticFiles.all_paths.remove(tmp_path.resolve())


def test_the_app_leaves_a_core_to_the_server(monkeypatch):
    """On CPU, app.py runs the generator on all cores but one, unless OMP_NUM_THREADS is set."""
    from t2i.serving import serving_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert serving_threads() == 7
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert serving_threads() == 1

    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        app.configure_cpu_threads()
        assert torch.get_num_threads() == threads  # the user's choice stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        app.configure_cpu_threads()
        assert torch.get_num_threads() == (threads if torch.cuda.is_available() else 2)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# The page's rough edges (newcomer issue, items 8-12)


def test_api_schema_says_int_for_whole_number_inputs(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert info["/generate"]["parameters"][1]["type"]["type"] == "integer"  # num_images
    assert info["/interpolate"]["parameters"][2]["type"]["type"] == "integer"  # num_steps
    assert info["/interpolate_noise"]["parameters"][3]["type"]["type"] == "integer"


def test_galleries_are_sized_to_their_content(app_url):
    components = httpx.get(f"{app_url}config", timeout=30).json()["components"]
    galleries = {c["props"].get("elem_id"): c["props"] for c in components if c["type"] == "gallery"}
    assert galleries["generate-gallery"]["height"] == "auto" and galleries["strip-gallery"]["height"] == "auto"


def test_header_shows_the_dataset_name_and_the_cards_numbers(tmp_path):
    from huggingface_hub import ModelCard

    from t2i import ModelCardInfo

    info = ModelCardInfo(model_id="m", dataset_name="synth", synthetic_data=True,
                         metrics={"text_image_agreement_petal_color": 0.91, "text_image_agreement_center_color": 0.62,
                                  "text_image_agreement_petal_count_word": 0.47, "oracle_frechet_distance_over_real": 1.8})
    make_tiny_pipeline().save_with_model_card(tmp_path, info)
    header = load_model(str(tmp_path)).description()
    assert "`synth`" in header and "/tmp" not in header.split("**Trained on:**")[1].split("\n")[0]
    assert "petal colour 0.91 · centre colour 0.62 · count bin 0.47 · FD / real-vs-real 1.80" in header
    assert "numbers below" not in header
    assert ModelCard.load(tmp_path / "README.md").data.eval_results  # the numbers come from the card's metadata


def test_a_refused_input_logs_one_line_and_no_traceback(app_url, capfd, caplog):
    client = Client(app_url, verbose=False)
    with caplog.at_level("INFO", logger="t2i.app"), pytest.raises(AppError):
        client.predict("🌸", 1, 0, api_name="/generate")
    time.sleep(0.5)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert [r for r in caplog.records if r.name == "t2i.app" and "refused input" in r.getMessage()]
