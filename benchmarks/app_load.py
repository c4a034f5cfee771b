"""Load test of the Gradio app: N concurrent gradio_client clients call /generate; p50/p95 latency and errors.

    python benchmarks/app_load.py --out benchmarks/results/app_load.json
    python benchmarks/app_load.py --clients 16 --repeat 5    # the spread between runs on shared cores

The app runs as its own process (`python app.py --model ...`, exactly as users start it) on a free loopback port;
the clients are threads of this process, each with its own `gradio_client.Client`, each sending its requests one
after another. Latency is measured at the client: submit, queue, generation, and the download of every image.

With no --model, the embedded default (pretrained/) is used if it exists; otherwise a default-sized (ngf = 64)
generator with random weights and the all-MiniLM-L6-v2 text encoder, saved to a temporary folder. Speed does not
depend on training, but the output says which model ran.

gradio_client opens a new httpx client for every HTTP call, and a default httpx client loads the CA bundle
(60-90 ms here) even for a plain-http URL. On loopback there is no TLS to verify, so the clients skip that
(ssl_verify=False) unless --verify_ssl is given; the JSON records which was used.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from t2i import GanClsPipeline
from t2i.cli import run_main
from t2i.serving import DEFAULT_MODEL_FOLDER, EXAMPLE_PROMPTS, build_random_pipeline
from t2i.text_encoders import TextEncoder

REPO_ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_model(model: str | None, folder: Path) -> tuple[str, str]:
    """(name or path for --model, description): the given model, the embedded default, or a random ngf = 64 one."""
    if model:
        GanClsPipeline.from_pretrained(model)  # else the app would serve its untrained stand-in, and time that
        return model, model
    if (DEFAULT_MODEL_FOLDER / "model_index.json").is_file():
        return str(DEFAULT_MODEL_FOLDER), "embedded default (pretrained/)"
    pipeline = build_random_pipeline(seed=0, ngf=64, text_encoder=TextEncoder.from_pretrained())
    pipeline.save_pretrained(folder)
    return str(folder), "NO TRAINED DEFAULT YET: random-weight generator (ngf=64, 64 px) + all-MiniLM-L6-v2"


def start_app(model: str, port: int, log: Path) -> subprocess.Popen:
    """Start `python app.py --model model` and wait until it answers on ``port``."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "app.py"), "--model", model, "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited: {log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("app.py did not start within 180 s")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(url: str, server_pid: int, clients: int, requests: int, num_images: int, args: argparse.Namespace) -> dict:
    """``clients`` threads, each sending ``requests`` /generate calls in sequence; latency in ms and errors."""
    from gradio_client import Client

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one_client(index: int) -> None:
        client = Client(url, verbose=False, ssl_verify=args.verify_ssl, download_files=not args.no_download)
        for i in range(requests):
            prompt = EXAMPLE_PROMPTS[(index + i) % len(EXAMPLE_PROMPTS)]
            if args.unique_prompts:  # defeat the app's embedding cache: every prompt is new
                prompt = f"{prompt} {index} {i}"
            start = time.perf_counter()
            try:
                images, _ = client.predict(prompt, num_images, index * 1000 + i, api_name="/generate")
                if len(images) != num_images:
                    raise RuntimeError(f"expected {num_images} images, got {len(images)}")
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(elapsed)
            except Exception as error:  # a load test counts failures instead of stopping at the first
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")

    load_before = os.getloadavg()[0]  # the cores are shared: a busy machine explains slow runs
    wall, client_cpu, server_cpu = time.perf_counter(), time.process_time(), process_cpu_seconds(server_pid)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    wall, client_cpu = time.perf_counter() - wall, time.process_time() - client_cpu
    server_cpu = process_cpu_seconds(server_pid) - server_cpu
    return {
        "clients": clients,
        "requests_per_client": requests,
        "num_images": num_images,
        "ok": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p95_ms": percentile(latencies, 95) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
        "mean_ms": statistics.fmean(latencies) if latencies else None,
        "max_ms": max(latencies) if latencies else None,
        "wall_s": wall,
        # CPU time per successful request, split between the app process and the clients (both share the cores).
        "server_cpu_ms_per_request": server_cpu * 1000 / max(len(latencies), 1),
        "client_cpu_ms_per_request": client_cpu * 1000 / max(len(latencies), 1),
        "requests_per_s": len(latencies) / wall,
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id or folder (default: pretrained/, else random ngf=64)")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts, one run each")
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests before the runs")
    parser.add_argument("--unique_prompts", action="store_true", help="a new prompt every request (no cache hits)")
    parser.add_argument("--no_download", action="store_true", help="do not download the images (server latency only)")
    parser.add_argument("--verify_ssl", action="store_true", help="let gradio_client load the CA bundle on every call")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per client count: the speed of shared cores drifts between runs"
    )
    parser.add_argument("--out", default="benchmarks/results/app_load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="t2i-app-load-") as tmp:
        model, model_description = prepare_model(args.model, Path(tmp) / "model")
        print(f"model: {model_description}")
        port = free_port()
        process = start_app(model, port, Path(tmp) / "app.log")
        runs: list[dict] = []
        try:
            url = f"http://127.0.0.1:{port}/"
            run_load(url, process.pid, 1, args.warmup, args.num_images, args)
            for clients in args.clients.split(","):
                for repeat in range(args.repeat):
                    run = run_load(url, process.pid, int(clients), args.requests, args.num_images, args)
                    runs.append({"repeat": repeat, **run})
        finally:
            process.terminate()
            process.wait(timeout=30)
            if any(run["errors"] for run in runs):
                log_tail = (Path(tmp) / "app.log").read_text().splitlines()[-40:]
                print("errors; the end of the app's log:\n" + "\n".join(log_tail))

    report = {
        "benchmark": "app_load",
        "endpoint": "/generate",
        "model": model_description,
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "unique_prompts": args.unique_prompts,
        "download_files": not args.no_download,
        "ssl_verify": args.verify_ssl,
        "runs": runs,
    }
    for run in runs:
        run = {k: float("nan") if v is None else v for k, v in run.items()}  # None when every request failed
        print(
            f"{run['clients']:3d} client(s) x {run['requests_per_client']} requests, {run['num_images']} images: "
            f"p50 {run['p50_ms']:.0f} ms, p95 {run['p95_ms']:.0f} ms, errors {run['errors']}, "
            f"{run['requests_per_s']:.1f} req/s; CPU per request: app {run['server_cpu_ms_per_request']:.0f} ms, "
            f"clients {run['client_cpu_ms_per_request']:.0f} ms; load average {run['loadavg_1min_before']:.1f}"
        )
    for clients in sorted({run["clients"] for run in runs}):
        p95s = [run["p95_ms"] for run in runs if run["clients"] == clients and run["p95_ms"] is not None]
        if len(p95s) > 1:
            summary = {"runs": len(p95s), "p95_min_ms": min(p95s), "p95_median_ms": statistics.median(p95s),
                       "p95_max_ms": max(p95s)}
            report.setdefault("p95_over_repeats", {})[str(clients)] = summary
            print(f"{clients:3d} client(s), p95 over {len(p95s)} runs: min {summary['p95_min_ms']:.0f} ms, "
                  f"median {summary['p95_median_ms']:.0f} ms, max {summary['p95_max_ms']:.0f} ms")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
