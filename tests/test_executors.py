"""Grid executors: local processes, submitit (SLURM, run here on its local cluster) and Ray."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import _executor_work as fns  # tests/ is on sys.path (pytest's default import mode)
import pytest

import harness
from harness import registry
from harness.errors import KDBenchError, OptionError
from harness.executor import GridInterrupted, finalize, one_line
from harness.registry import lookup
from plugins.executors import local as local_mod
from plugins.executors.local import LocalExecutor, device_slots, gpu_ids
from plugins.executors.ray_executor import RayExecutor, check_fits
from plugins.executors.slurm import SlurmExecutor, job_error

TESTS = Path(__file__).parent


def make_cells(tmp_path: Path, n: int, **common) -> list[dict]:
    return [
        dict(cell_id=f"c{i}", label=f"cell {i}", dir=str(tmp_path), x=i, **common) for i in range(n)
    ]


def marks(tmp_path: Path, cell_id: str, what: str) -> dict:
    return json.loads((tmp_path / f"{cell_id}.{what}").read_text())


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the cells to start"
        time.sleep(0.05)


# ------------------------------------------------------------------------- shared pieces


def test_registered_under_their_names(monkeypatch):
    # Load only the executor plugins (the others import torch and friends: seconds).
    monkeypatch.setenv("KDBENCH_LOAD_PLUGINS", "executors_local,executors_slurm,executors_ray")
    monkeypatch.setattr(registry, "_state", None)  # the previous state comes back afterwards
    assert lookup("executor", "local") is LocalExecutor
    assert lookup("executor", "slurm") is SlurmExecutor
    assert lookup("executor", "ray") is RayExecutor
    executor = harness.get_executor("local", workers=2, threads=1)
    assert (executor.workers, executor.threads) == (2, 1)
    assert executor.options["workers"] == 2


def test_finalize_checks_what_work_returns():
    cell = {"cell_id": "a1", "label": "A"}
    assert finalize(cell, {"status": "diverged", "cell_id": "other", "fid": None}) == {
        "label": "A",
        "status": "diverged",
        "cell_id": "a1",
        "fid": None,
    }
    bad = finalize(cell, {"status": "done"})
    assert bad["status"] == "failed" and "'done'" in bad["error"] and "finished" in bad["error"]
    assert finalize(cell, [1, 2])["error"] == (
        "work returned list, expected a dict with a 'status'"
    )


def test_one_line_keeps_the_exception_line():
    trace = "Traceback (most recent call last):\n  File x\n    y()\nValueError: bad   value\n\n"
    assert one_line(trace) == "ValueError: bad value"
    assert len(one_line("x" * 2000)) == 500


@pytest.mark.parametrize(
    "make",
    [
        lambda: LocalExecutor(workers=0),
        lambda: LocalExecutor(threads="2"),
        lambda: LocalExecutor(workers=True),
        lambda: LocalExecutor(grace_s=-1),
        lambda: SlurmExecutor(cluster="kubernetes"),
        lambda: SlurmExecutor(timeout_min=0),
        lambda: SlurmExecutor(gpus_per_node=-1),
        lambda: RayExecutor(num_gpus=-1),
        lambda: RayExecutor(num_cpus=0),
        lambda: RayExecutor(max_retries=1.5),
    ],
)
def test_bad_options_raise_option_error(make):
    with pytest.raises(OptionError, match=r"^executor '(local|slurm|ray)': "):
        make()


def test_missing_optional_dependencies_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    monkeypatch.setitem(sys.modules, "submitit", None)
    cells = make_cells(tmp_path, 1)
    with pytest.raises(KDBenchError, match=r"pip install kdbench\[ray\]"):
        RayExecutor().run(cells, fns.record)
    with pytest.raises(KDBenchError, match=r"pip install kdbench\[slurm\]"):
        SlurmExecutor(cluster="local").run(cells, fns.record)


# --------------------------------------------------------------------------------- local


def test_gpu_ids_follow_the_parents_visible_devices():
    assert gpu_ids(2, None) == ["0", "1"]
    assert gpu_ids(2, "3, 5,7") == ["3", "5"]
    assert gpu_ids(1, "GPU-8f1c,GPU-0a2b") == ["GPU-8f1c"]
    assert gpu_ids(0, None) == []


def test_device_slots_pin_one_worker_per_gpu():
    assert device_slots(None, []) == [None]  # CPU: one worker, nothing pinned
    assert device_slots(3, []) == [None, None, None]
    assert device_slots(None, ["0", "1", "2", "3"]) == ["0", "1", "2", "3"]
    assert device_slots(2, ["4", "6", "7"]) == ["4", "6"]
    assert device_slots(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]  # round-robin sharing


def test_visible_gpus_without_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_mod.visible_gpus() == []


@pytest.fixture(scope="module")
def parallel_grid(tmp_path_factory):
    """Four cells on two workers; the first is slow, so cell order != completion order."""
    tmp_path = tmp_path_factory.mktemp("parallel")
    cells = make_cells(tmp_path, 4)
    for cell, sleep in zip(cells, [1.5, 0.1, 0.4, 0.1]):
        cell["sleep"] = sleep
    results = LocalExecutor(workers=2).run(cells, fns.record)
    times = {
        c["cell_id"]: (
            marks(tmp_path, c["cell_id"], "start")["time"],
            marks(tmp_path, c["cell_id"], "end")["time"],
        )
        for c in cells
    }
    return cells, results, times


def test_local_results_come_back_in_cell_order(parallel_grid):
    cells, results, times = parallel_grid
    assert [r["cell_id"] for r in results] == [c["cell_id"] for c in cells]
    assert [r["value"] for r in results] == [0, 1, 4, 9]
    assert [r["label"] for r in results] == [c["label"] for c in cells]
    assert times["c1"][1] < times["c0"][1]  # finished first, reported second


def test_local_runs_two_cells_at_once_and_never_more(parallel_grid):
    _, results, times = parallel_grid
    (s0, e0), (s1, e1) = times["c0"], times["c1"]
    assert max(s0, s1) < min(e0, e1)  # the first two overlapped
    for start, _ in times.values():
        assert sum(s <= start < e for s, e in times.values()) <= 2
    pids = [r["pid"] for r in results]
    assert len(set(pids)) == 4 and os.getpid() not in pids  # a fresh process per cell


def test_local_crashing_cells_fail_and_the_grid_goes_on(tmp_path, capfd):
    cells = make_cells(tmp_path, 6, sleep=0.05)
    for cell, crash in zip(cells, [None, "exit", "sigkill", "raise", "bad-status", None]):
        cell["crash"] = crash
    results = LocalExecutor(workers=2, progress=True).run(cells, fns.crash)
    assert [r["status"] for r in results] == ["finished"] + ["failed"] * 4 + ["finished"]
    assert [r["value"] for r in (results[0], results[5])] == [0, 25]
    assert results[1]["error"] == "worker exited with code 3 without returning a result"
    assert results[2]["error"] == "worker killed by signal SIGKILL"
    assert results[3]["error"] == "ValueError: boom in c3"
    assert "status 'done'" in results[4]["error"]
    assert all("\n" not in r.get("error", "") for r in results)
    err = capfd.readouterr().err
    assert "6/6" in err and "failed 4" in err  # the progress bar
    assert "Traceback" in err and "boom in c3" in err  # the child's traceback, for the log


def test_local_pins_one_gpu_per_running_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(local_mod, "visible_gpus", lambda: ["5", "7"])  # a fake 2-GPU box
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cells = make_cells(tmp_path, 3, sleep=0.3)
    results = LocalExecutor().run(cells, fns.environment)  # default: one worker per GPU
    devices = [r["cuda_visible_devices"] for r in results]
    assert devices[:2] == ["5", "7"] and devices[2] in ("5", "7")  # the first two start at once
    times = [
        (
            marks(tmp_path, c["cell_id"], "start")["time"],
            marks(tmp_path, c["cell_id"], "end")["time"],
        )
        for c in cells
    ]
    for i in range(3):
        for j in range(i):
            if max(times[i][0], times[j][0]) < min(times[i][1], times[j][1]):
                assert devices[i] != devices[j]  # cells running together never share a GPU
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the parent's environment is restored
    assert all(r["omp_num_threads"] == os.environ.get("OMP_NUM_THREADS") for r in results)


def test_local_sets_torch_threads_in_the_child(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    results = LocalExecutor(workers=1, threads=1).run(make_cells(tmp_path, 1), fns.environment)
    assert results[0]["omp_num_threads"] == "1" and results[0]["torch_threads"] == 1
    assert set(results[0]["blas_threads"]) == {1}  # numpy's OpenBLAS too (harness.threads)
    assert results[0]["cuda_visible_devices"] == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert os.environ["OMP_NUM_THREADS"] == "2"


def test_limit_threads_sets_the_blas_pool_numpy_already_loaded():
    """A forkserver imports numpy before a cell's OMP_NUM_THREADS exists: its OpenBLAS
    pool must be set where it is, not through the environment."""
    probe = (
        "import numpy, torch\n"
        "from threadpoolctl import threadpool_info\n"
        "from harness.threads import limit_threads\n"
        "blas = lambda: [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']\n"
        "before = blas()\n"
        "limit_threads(1)\n"
        "print(before, blas(), torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[2]", "[1]", "1"]


def test_local_inprocess_runs_in_this_process(tmp_path):
    cells = make_cells(tmp_path, 2)
    cells[1]["crash"] = "raise"
    results = LocalExecutor(inprocess=True).run(cells, fns.crash)
    assert results[0]["pid"] == os.getpid()
    assert results[1] == {
        "cell_id": "c1",
        "label": "cell 1",
        "status": "failed",
        "error": "ValueError: boom in c1",
    }


def test_local_rejects_work_it_cannot_send(tmp_path):
    with pytest.raises(TypeError, match="picklable top-level function"):
        LocalExecutor().run(make_cells(tmp_path, 1), lambda cell: {"status": "finished"})
    assert LocalExecutor().run([], fns.record) == []


_INTERRUPT_SCRIPT = textwrap.dedent("""
    import json, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C
    sys.path.insert(0, {tests!r})
    import _executor_work as fns
    from harness.executor import GridInterrupted
    from plugins.executors.local import LocalExecutor
    cells = [dict(cell_id=mode, label=mode, dir={dir!r}, mode=mode)
             for mode in ("polite", "raw", "stubborn", "later")]
    executor = LocalExecutor(workers=3, grace_s=3)
    try:
        executor.run(cells, fns.until_interrupted)
    except GridInterrupted as exc:
        json.dump({{"results": exc.results, "kept": executor.results == exc.results,
                   "keyboard": isinstance(exc, KeyboardInterrupt)}}, open({out!r}, "w"))
        sys.exit(130)
""")


def test_ctrl_c_reaches_the_cells_once_and_reports_partial_results(tmp_path):
    out = tmp_path / "out.json"
    script = _INTERRUPT_SCRIPT.format(tests=str(TESTS), dir=str(tmp_path), out=str(out))
    # A session of its own, so that the SIGINT below reaches the parent's whole process
    # group, as a terminal's Ctrl-C does; each cell must still see exactly one SIGINT.
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        wait_for(lambda: len(list(tmp_path.glob("*.start"))) == 3)
        os.killpg(parent.pid, signal.SIGINT)
        assert parent.wait(timeout=60) == 130
    finally:
        if parent.poll() is None:
            parent.kill()
    report = json.loads(out.read_text())
    assert report["keyboard"] and report["kept"]
    polite, raw, stubborn, later = report["results"]
    assert polite["status"] == "killed" and polite["note"] == "checkpoint kept"  # work's own
    assert marks(tmp_path, "polite", "interrupted")["sigints"] == 1
    assert raw == {
        "cell_id": "raw",
        "label": "raw",
        "status": "killed",
        "error": "interrupted before the cell returned",
    }
    assert stubborn["status"] == "killed" and "did not stop within 3 s" in stubborn["error"]
    assert later == {"cell_id": "later", "label": "later", "status": "skipped"}
    assert not (tmp_path / "later.start").exists()
    with pytest.raises(ProcessLookupError):  # the stubborn cell was terminated, not orphaned
        os.kill(marks(tmp_path, "stubborn", "start")["pid"], 0)


# --------------------------------------------------------------------------------- slurm


@pytest.fixture
def importable_work(monkeypatch):
    """Job processes import the work functions by name: put tests/ on their path."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)


def test_slurm_local_cluster_runs_a_grid_and_maps_a_failing_job(tmp_path, importable_work):
    cells = make_cells(tmp_path, 2)
    cells[1]["crash"] = "raise"
    executor = SlurmExecutor(folder=str(tmp_path / "jobs" / "%j"), cluster="local", poll_s=0.2)
    results = executor.run(cells, fns.crash)
    assert results[0]["status"] == "finished" and results[0]["value"] == 0
    assert results[0]["pid"] != os.getpid()
    assert results[1] == {
        "cell_id": "c1",
        "label": "cell 1",
        "status": "failed",
        "error": "ValueError: boom in c1",
    }


def test_slurm_preempted_job_is_requeued_and_resumes(tmp_path, importable_work):
    submitit = pytest.importorskip("submitit")
    # submitit's local cluster sends the timeout signal (SIGUSR2) signal_delay_s before
    # timeout_min runs out, exactly as SLURM does before a preemption or time limit.
    cluster = submitit.LocalExecutor(str(tmp_path / "jobs" / "%j"), max_num_timeout=2)
    cluster.update_parameters(timeout_min=4 / 60, signal_delay_s=2)
    cells = [dict(cell_id="r", label="resumable", dir=str(tmp_path))]
    executor = SlurmExecutor(poll_s=0.2)
    jobs = executor.submit(cells, fns.resumable, executor=cluster)
    assert executor.wait(jobs, cells) == [
        {"cell_id": "r", "label": "resumable", "status": "finished", "attempt": 2}
    ]
    assert "Requeued job" in jobs[0].stdout()


def test_cell_job_checkpoint_resubmits_the_same_cell(tmp_path):
    submitit = pytest.importorskip("submitit")
    from plugins.executors.slurm import RequeueableCell

    cell = make_cells(tmp_path, 1)[0]
    job = RequeueableCell(fns.record, cell)
    assert isinstance(job, submitit.helpers.Checkpointable)
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, RequeueableCell) and delayed.function is not job
    assert delayed.function.cell == cell and delayed.function.work is fns.record
    assert (delayed.args, delayed.kwargs) == ((), {})
    assert delayed.result()["value"] == 0
    again = pickle.loads(pickle.dumps(job))  # by reference, as the job process loads it
    assert type(again) is RequeueableCell and again.cell == cell


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    executor = SlurmExecutor(
        folder=str(tmp_path / "%j"),
        cluster="slurm",
        partition="gpu",
        account="kd-lab",
        gpus_per_node=1,
        cpus_per_task=4,
        timeout_min=90,
        mem_gb=16,
        array_parallelism=3,
    )
    auto = executor.make_submitit_executor()
    script = auto._executor._make_submission_file_text("python -m work", "uid")
    for line in (
        "--partition=gpu",
        "--account=kd-lab",
        "--gpus-per-node=1",
        "--cpus-per-task=4",
        "--time=90",
        "--mem=16GB",
        "--job-name=kdbench",
    ):
        assert f"#SBATCH {line}\n" in script
    assert auto._executor.parameters["array_parallelism"] == 3
    assert auto._executor.max_num_timeout == 3


def test_slurm_without_srun_is_a_clear_error(tmp_path):
    pytest.importorskip("submitit")
    with pytest.raises(KDBenchError, match="executor 'slurm': .*srun"):
        SlurmExecutor(folder=str(tmp_path), cluster="slurm").run(
            make_cells(tmp_path, 1), fns.record
        )


def test_job_error_reads_the_trace_or_the_state():
    submitit = pytest.importorskip("submitit")
    rule = "-" * 22
    failure = submitit.core.utils.FailedJobError(
        f"Job (task=0) failed during processing with trace:\n{rule}\nTraceback:\n  x\n"
        f"RuntimeError: CUDA out of memory\n\n{rule}\nYou can check full logs with ..."
    )
    job = SimpleNamespace(job_id="42_1", state="OUT_OF_MEMORY")
    assert job_error(job, failure) == "RuntimeError: CUDA out of memory"
    lost = submitit.core.utils.UncompletedJobError("Job 42_1 has not produced any output")
    assert job_error(job, lost) == "job 42_1 ended without a result (state OUT_OF_MEMORY)"


# ----------------------------------------------------------------------------------- ray


def test_check_fits_refuses_what_would_hang():
    cpu_node = {"CPU": 8.0, "memory": 1e10}
    gpu_node = {"CPU": 16.0, "GPU": 2.0}
    check_fits([cpu_node], num_cpus=2, num_gpus=0)
    check_fits([cpu_node, gpu_node], num_cpus=4, num_gpus=2)
    with pytest.raises(KDBenchError, match="has no GPUs"):
        check_fits([cpu_node], num_cpus=1, num_gpus=1)
    with pytest.raises(KDBenchError, match="no node has more than 2 GPUs"):
        check_fits([gpu_node, cpu_node], num_cpus=1, num_gpus=4)
    with pytest.raises(KDBenchError, match="no node has more than 16 CPUs"):
        check_fits([gpu_node], num_cpus=32, num_gpus=0)


def test_ray_num_gpus_defaults_to_what_the_cluster_has():
    def fake_ray(resources):
        return SimpleNamespace(
            nodes=lambda: [
                {"Alive": True, "Resources": resources},
                {"Alive": False, "Resources": {"GPU": 8.0}},
            ]
        )

    assert RayExecutor().resolve_gpus(fake_ray({"CPU": 8.0, "GPU": 4.0})) == 1
    assert RayExecutor().resolve_gpus(fake_ray({"CPU": 8.0})) == 0  # dead node not counted
    assert RayExecutor(num_gpus=0.5).resolve_gpus(fake_ray({"CPU": 8.0, "GPU": 1.0})) == 0.5


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        # Ray's workers import the work functions by name: put tests/ on their path.
        mp.setenv(
            "PYTHONPATH",
            os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p),
        )
        # Ray's processes inherit this one's dispositions; its cancellation interrupts a
        # task with SIGINT, which a background job's ignored SIGINT would swallow.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            yield ray
        finally:
            ray.shutdown()


def test_ray_runs_a_grid_with_a_fresh_worker_per_cell(tmp_path, local_ray):
    cells = make_cells(tmp_path, 4)
    cells[2]["crash"] = "raise"
    cells[3]["crash"] = "exit"
    # Two CPUs per cell on a two-CPU instance: the cells run one after the other.
    results = RayExecutor(num_cpus=2).run(cells, fns.crash)
    assert [r["status"] for r in results] == ["finished", "finished", "failed", "failed"]
    assert [r["value"] for r in results[:2]] == [0, 1]
    assert results[0]["pid"] != results[1]["pid"]  # max_calls=1: no worker reuse
    assert results[2]["error"] == "ValueError: boom in c2"
    assert results[3]["error"].startswith("worker died")
    assert local_ray.is_initialized()  # an instance it did not start is left running


def test_ray_refuses_gpu_cells_on_a_cpu_cluster(tmp_path, local_ray):
    with pytest.raises(KDBenchError, match="num_gpus=1 per cell, but the ray cluster has no GPUs"):
        RayExecutor(num_gpus=1).run(make_cells(tmp_path, 1), fns.record)


def test_ray_ctrl_c_cancels_the_cells(tmp_path, local_ray):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    cells = [dict(cell_id="polite", label="polite", dir=str(tmp_path), mode="polite")]

    def press_ctrl_c():
        wait_for(lambda: (tmp_path / "polite.start").exists())
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(GridInterrupted) as info:
            RayExecutor(grace_s=10).run(cells, fns.until_interrupted)
    finally:
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert info.value.results == [
        {"label": "polite", "status": "killed", "note": "checkpoint kept", "cell_id": "polite"}
    ]
    assert marks(tmp_path, "polite", "interrupted")["sigints"] == 1
