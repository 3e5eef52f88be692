"""Many GPUs on one machine: device ``auto``, one worker per GPU with its own
``CUDA_VISIBLE_DEVICES``, ``cuda`` and ``cuda:0`` as one GPU, and each GPU's queue on the Runs
page.  GPUs are simulated (``SPARSEBENCH_SIMULATED_GPUS``): the workers and their environment
are real, the runs compute on the CPU."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from core.engine import devices
from core.execution import jobs, worker
from core.execution.local import LocalExecutor
from core.present import runs as run_views
from core.runs.kinds.prune import PruneSpec
from core.runs.specs import device_problems
from core.store import queries
from core.store.db import Store
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder


@pytest.fixture()
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(devices.SIMULATED_ENV, "4")
    monkeypatch.delenv(devices.SLOT_ENV, raising=False)


def test_slots_and_what_each_worker_serves(four_gpus: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert devices.slots() == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cpu"]
    assert devices.slots_for("auto") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert devices.slots_for("cuda") == ["cuda:0"] and devices.slots_for("cuda:2") == ["cuda:2"]
    assert devices.serves("cuda:0") == ["cuda:0", "cuda", "auto"]
    assert devices.serves("cuda:3") == ["cuda:3", "auto"] and devices.serves("cpu") == ["cpu"]
    env = devices.worker_environment("cuda:2")
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env[devices.SLOT_ENV] == "cuda:2"
    assert devices.worker_environment("cpu")["CUDA_VISIBLE_DEVICES"] == ""
    assert devices.compute_device("cuda:1", "auto") == "cpu"  # simulated: computes on the CPU
    assert devices.default_device() == "auto" and PruneSpec().device == "auto"
    monkeypatch.setenv(devices.SIMULATED_ENV, "0")
    assert devices.slots() == ["cpu"] and devices.serves("cpu") == ["cpu", "auto"]
    assert devices.default_device() == "cpu" and PruneSpec().device == "cpu"
    monkeypatch.setenv(devices.SIMULATED_ENV, "two")
    with pytest.raises(ValueError, match="SPARSEBENCH_SIMULATED_GPUS='two'"):
        devices.gpus()


def test_cuda_is_cuda_0_one_lock(four_gpus: None, tmp_path: Path) -> None:
    """A run stored as ``cuda`` is ``cuda:0``; both names take the same worker lock."""
    assert PruneSpec(device="cuda").device == "cuda:0"
    assert PruneSpec.from_dict({**PruneSpec().to_dict(), "device": "cuda"}).device == "cuda:0"
    db = tmp_path / "r.duckdb"
    assert worker.lock_path(db, "cuda") == worker.lock_path(db, "cuda:0")
    with worker.device_lock(db, "cuda") as held:
        assert held and worker.worker_alive(db, "cuda:0")
    assert not worker.worker_alive(db, "cuda:0")
    assert device_problems("cuda:3") == [] and device_problems("auto") == []
    assert "'cuda:4' is not available" in device_problems("cuda:4")[0]
    assert "not one of auto, cpu, cuda, cuda:N or mps" in device_problems("tpu")[0]


def running_now(store: Store) -> int:
    return int(store.frame("SELECT count(*) FROM runs WHERE status = 'running'").iloc[0, 0])


def test_sixteen_cells_on_four_gpus_run_four_at_a_time(
        four_gpus: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 20 s: five worker processes start (one per simulated GPU and one for the CPU)
    and sixteen real runs execute, each in its own child process."""
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    model = tiny_llama_folder(tmp_path / "tiny")
    text = tmp_path / "short.txt"
    text.write_text(SAMPLE_TEXT)
    store = Store(tmp_path / "results.duckdb").init()
    cells = [PruneSpec(model=str(model), method="magnitude", sparsity=f"{0.05 * (i + 1):.2f}",
                       ppl_datasets=[str(text)], ppl_seqlen=32, max_windows=1, batch_size=1)
             for i in range(15)]
    pinned = PruneSpec(model=str(model), method="magnitude", sparsity="0.9", device="cuda:2",
                       ppl_datasets=[str(text)], ppl_seqlen=32, max_windows=1, batch_size=1)
    subs = [jobs.submit(store, spec) for spec in [*cells, pinned]]
    assert jobs.request_cancel(store, subs[0].baseline_id) == "cancelled"  # cells are the subject
    ids = [s.run_id for s in subs]
    executor = LocalExecutor(store, idle_exit_s=3)
    assert executor.pending_devices() == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    table = run_views.device_queues(store, devices.slots())
    assert table["Queued for any GPU"].tolist() == [15, 15, 15, 15, 0]
    assert table["Queued for it"].tolist() == [0, 0, 1, 0, 0]
    assert sorted(executor.ensure_workers()) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    most, seen_table = 0, False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        most = max(most, running_now(store))
        if most == 4 and not seen_table:
            running = run_views.device_queues(store, devices.slots())["Running"].tolist()
            seen_table = sum(r.startswith("run ") for r in running) >= 3
        statuses = store.frame(f"SELECT status FROM runs WHERE id IN ({', '.join(map(str, ids))})")
        if not statuses["status"].isin(jobs.ACTIVE).any():
            break
        time.sleep(0.1)
    final = store.frame(f"SELECT id, status, worker, error FROM runs WHERE id IN "
                        f"({', '.join(map(str, ids))}) ORDER BY id")
    assert (final["status"] == "done").all(), final.to_dict("records")
    assert most == 4 and seen_table  # four at a time, one per GPU, and the table shows them
    slots = {int(i): run_views.held_slot(w) for i, w in zip(final["id"], final["worker"],
                                                             strict=True)}
    assert set(slots.values()) == {"cuda:0", "cuda:1", "cuda:2", "cuda:3"}
    assert slots[pinned_id := ids[-1]] == "cuda:2"
    for run_id, slot in slots.items():  # each worker saw its own GPU alone
        started = [line for *_, line in store.control.logs(run_id) if "executing on" in line]
        visible = re.search(r"CUDA_VISIBLE_DEVICES=(\d+)", started[0]).group(1)
        assert f"slot {slot}, device cpu" in started[0] and visible == slot.split(":")[1]
    ppl = queries.metric_rows(store, "perplexity")
    assert sorted(ppl["run_id"]) == sorted(ids) and pinned_id in set(ppl["run_id"])


def test_an_auto_run_waits_for_a_gpu_with_room(four_gpus: None, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU worker takes an ``auto`` run only when its memory plan fits the GPU's free memory
    now (the plan is faked too big); it takes the run pinned to its GPU meanwhile."""
    from core.runs import preflight

    model = tiny_llama_folder(tmp_path / "tiny")
    store = Store(tmp_path / "results.duckdb").init()
    base = dict(model=str(model), method="magnitude", ppl_datasets=["wiki-offline"],
                ppl_seqlen=32, max_windows=1)
    first = jobs.submit(store, PruneSpec(sparsity="0.5", **base))
    assert jobs.request_cancel(store, first.baseline_id) == "cancelled"  # not the subject
    second = jobs.submit(store, PruneSpec(sparsity="0.6", device="cuda:1", **base))
    assert jobs.request_cancel(store, second.baseline_id) == "cancelled"
    auto, pinned = first.run_id, second.run_id
    slot = worker.Worker(store.path, "cuda:1")
    monkeypatch.setattr(devices, "simulated", lambda: None)  # a real GPU: its plan is checked
    asked = []

    def too_big(cfg, work, at_start=False):  # noqa: ANN001, ANN202
        asked.append((work.device, at_start))
        return ["Memory: this run needs about 70 GiB of cuda:0 memory at its peak"]

    monkeypatch.setattr(preflight, "plan_problems", too_big)
    assert slot.claim() == pinned
    assert asked == [("cuda:0", True)]  # the worker's one visible GPU, its free memory
    assert slot.claim() is None  # the auto run still does not fit: it stays queued
    waiting = [line for *_, line in store.control.logs(auto) if line.startswith("waiting")]
    assert len(waiting) == 1 and "not on GPU cuda:1 yet" in waiting[0] and "70 GiB" in waiting[0]
    monkeypatch.setattr(preflight, "plan_problems", lambda *a, **k: [])
    assert slot.claim() == auto
