"""Shared fixtures: simulated plugin distributions and small grid files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import registry


def install_fake_distribution(
    root: Path, name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
) -> Path:
    """Write modules plus a ``.dist-info`` folder, as ``pip install`` would leave them."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[kdbench]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Install fake plugin distributions on sys.path; the registry reloads afterwards."""
    added: list[str] = []

    def install(
        name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
    ) -> None:
        root = install_fake_distribution(tmp_path / name, name, version, entry_points, modules)
        sys.path.insert(0, str(root))
        added.append(str(root))
        registry.reload()

    yield install
    for path in added:
        sys.path.remove(path)
    for module in [m for m in sys.modules if m.startswith("fakeplug_")]:
        del sys.modules[module]
    registry.reload()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: two OpenMP threads on a shared 2-core machine
    spin against other jobs (20x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kdbench-example-objective"

# The smallest real grid: one pruned teacher/student pair on the embedded digits, a few
# steps, in-process.  Tests replace NAME and override what they exercise with --set.
TINY_GRID = """
teachers = [{prune = 0.0}]
students = [{prune = 0.5}]
objectives = ["place"]

[grid]
name = "NAME"
seeds = [0]

[dataset]
name = "digits"
image_size = 16

[model]
backbone = "unet"
base = "xxs"

[pretrain]
steps = 10
finetune_steps = 5
batch_size = 16

[train]
steps = 10
batch_size = 16
log_every = 2
checkpoint_every = 5
threads = 1

[eval]
num_samples = 50
sample_steps = 3
batch_size = 50

[executor.options]
inprocess = true
"""


def chromium_or_skip() -> None:
    """Skip a test that needs Chromium where there is none; in CI, fail instead."""
    from leaderboards.browser import find_chromium

    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide Chromium (.ci/chromium installs Debian's package)")
        pytest.skip("no Chromium here (apt-get install chromium); CI installs it via .ci/chromium")


@contextlib.contextmanager
def tmpfs_folder(prefix: str, fallback: Path):
    """A fresh folder on tmpfs when there is one, removed afterwards; else ``fallback``.

    SQLite fsyncs every commit: on tmpfs a store fills several times faster than on disk.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield fallback
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    """A localhost port that was free a moment ago (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_mlflow_server(
    backend: str, folder: Path, workers: int = 1, timeout: float = 120, port: int | None = None
):
    """A real ``mlflow server`` on 127.0.0.1 against ``backend``; yields its URL.

    ``port``: a free one unless given (to start a server again where it was).  Leaving the
    block stops it with SIGTERM.  Skips (with the server's last log lines) only when the
    server cannot start.
    """
    port = port or free_port()
    log = open(folder / "server.log", "ab")
    exe = shutil.which("mlflow")
    cmd = ([exe] if exe else [sys.executable, "-m", "mlflow"]) + [
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout  # generous: other test processes share the CPU
        while True:
            if proc.poll() is not None:
                tail = (folder / "server.log").read_text(errors="replace")[-500:]
                pytest.skip(f"mlflow server exited with {proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"mlflow server did not answer /health within {timeout:g} s")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def ddim_draw(folder: Path, unet: Any, n: int, steps: int, seed: int) -> Any:
    """``n`` images (NHWC, in [0, 1]) drawn from a saved student by diffusers' own
    ``DDIMPipeline`` (eta 0) with the scheduler saved next to it."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        batch_size=n, generator=generator, num_inference_steps=steps, eta=0.0, output_type="np"
    ).images


def kdbench_argv(grid: Path, uri: str, cache: Path, *extra: str) -> list[str]:
    """``kdbench run GRID --tracking-uri URI --cache-dir CACHE EXTRA...`` by this interpreter."""
    cmd = [sys.executable, "-m", "harness.cli", "run", str(grid), "--tracking-uri", uri]
    return [*cmd, "--cache-dir", str(cache), *extra]


def one_thread_env(**extra: str) -> dict[str, str]:
    """Our environment with one OpenMP thread (a shared 2-core machine) plus ``extra``."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run_kdbench(
    grid: Path, uri: str, cache: Path, *extra: str, timeout: float
) -> subprocess.CompletedProcess:
    """``kdbench run`` to its end in the grid's folder, its output captured."""
    return subprocess.run(
        kdbench_argv(grid, uri, cache, *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=grid.parent,
        env=one_thread_env(),
    )


def start_kdbench(
    grid: Path,
    uri: str,
    cache: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """``kdbench run --quiet --no-leaderboard`` as a real process in its own session (a
    terminal's process group), in the grid's folder; ``env`` is added to ours."""
    return subprocess.Popen(
        kdbench_argv(grid, uri, cache, "--quiet", "--no-leaderboard", *extra),
        cwd=grid.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=one_thread_env(**(env or {})),
        preexec_fn=preexec_fn,
    )


def wait_for(proc: subprocess.Popen, path: Path, timeout: float = 600) -> None:
    """Wait until a running ``kdbench`` process has written ``path`` (fail if it ends first)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"kdbench ended ({proc.returncode}) before {path.name}: {err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout:g} s")
        time.sleep(0.05)
