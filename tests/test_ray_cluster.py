"""The Ray executor on a real multi-node cluster on this machine (``ray.cluster_utils.Cluster``:
a head without CPUs and two worker nodes of one CPU each).  The driver runs from a folder
without the project, so the tasks import it from the runtime environment; the run files live in
the shared folder.  Six runs spread over both nodes; the node of a running run is removed and
its run is queued again once and ends done, stored once; a dispatcher that dies leaves its run
to the next one, which runs it again while the lost task still reports; runs the cluster cannot
take are refused at submit with its resources in the message."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core import config
from core.engine import data
from core.execution import cluster as clusters
from core.execution import jobs
from core.execution.ray import REQUEUED, Dispatcher, RayExecutor, connect
from core.runs.kinds.prune import PruneSpec
from core.store import queries
from core.store.db import Store
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture()
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The shared folder with a tiny model and two texts; the settings of a clustered run."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "short.txt").write_text(SAMPLE_TEXT)
    (folder / "long.txt").write_text(data.load_text("wiki-offline", "calibration")[:200_000])
    model = tiny_llama_folder(folder / "tiny")
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text(SAMPLE_TEXT)
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPARSEBENCH_SHARED_DIR", str(folder))
    monkeypatch.setenv("SPARSEBENCH_EXECUTOR", "ray")
    monkeypatch.setenv("SPARSEBENCH_RAY_RETRIES", "1")
    away = tmp_path / "driver"  # no project here: the workers get it from the runtime_env
    away.mkdir()
    monkeypatch.chdir(away)
    return {"model": model, "short": folder / "short.txt", "long": folder / "long.txt",
            "elsewhere": elsewhere}


def spec(files: dict[str, Path], sparsity: str, windows: int, **kw) -> PruneSpec:
    """Magnitude pruning of the tiny model, ``windows`` perplexity windows of the long text."""
    values = dict(model=str(files["model"]), method="magnitude", sparsity=sparsity,
                  ppl_datasets=[str(files["long"])], ppl_seqlen=32, max_windows=windows,
                  batch_size=1, device="cpu")
    return PruneSpec(**{**values, **kw})


def step_until(dispatcher: Dispatcher, ready: Callable[[], bool], timeout: float,
               what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dispatcher.step()
        if ready():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def log_of(store: Store, run_id: int) -> list[str]:
    return [line for *_, line in store.control.logs(run_id)]


def node_of(store: Store, run_id: int) -> str:
    """The node id a run's latest task reported starting on ('' before it started)."""
    found = [re.search(r", node ([0-9a-f]+)\) pid", line) for line in log_of(store, run_id)
             if line.startswith("started on ")]
    return found[-1].group(1) if found else ""


def test_runs_over_two_nodes_a_lost_node_and_a_lost_dispatcher(
        shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """About 30 s alone: a three-node cluster starts and seven tiny runs execute on it, two
    of them twice."""
    head = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [head.add_node(num_cpus=1), head.add_node(num_cpus=1)]
    head.wait_for_nodes()
    monkeypatch.setenv("SPARSEBENCH_RAY_ADDRESS", head.address)
    store = Store(tmp_path / "results.duckdb").init()
    try:
        connect(head.address)
        dispatcher = Dispatcher(store)
        executor = RayExecutor(store, address=head.address)
        refused_at_submit(store, shared)
        ids = six_runs_and_a_lost_node(store, dispatcher, shared, head, nodes)
        lost_dispatcher(store, dispatcher, shared)
        assert executor.poll()["running"] == {}
    finally:
        ray.shutdown()
        head.shutdown()
    logs = {run_id: log_of(store, run_id) for run_id in ids}
    code = {line.split("code from ")[1].split(";")[0] for lines in logs.values()
            for line in lines if "code from " in line}
    assert code and not any(path.startswith(str(config.REPO_ROOT)) for path in code), code
    assert all("SPARSEBENCH_SHARED_DIR" in line for lines in logs.values()
               for line in lines if line.startswith("started on "))


def refused_at_submit(store: Store, files: dict[str, Path]) -> None:
    """A GPU run on a cluster without GPUs, and a file outside the shared folder."""
    with pytest.raises(ValueError) as gpu:
        jobs.submit(store, spec(files, "0.5", 2, device="cuda:0"))
    assert "needs 1 GPU" in str(gpu.value)
    assert "the Ray cluster offers 3 nodes, 2 CPUs, 0 GPUs" in str(gpu.value)
    with pytest.raises(ValueError) as outside:
        jobs.submit(store, spec(files, "0.5", 2, ppl_datasets=[str(files["elsewhere"])]))
    assert f"{str(files['elsewhere'])!r} is a path on this machine" in str(outside.value)
    assert "SPARSEBENCH_SHARED_DIR" in str(outside.value)
    assert store.frame("SELECT count(*) FROM runs").iloc[0, 0] == 0  # nothing half queued


def six_runs_and_a_lost_node(store: Store, dispatcher: Dispatcher, files: dict[str, Path],
                             head, nodes: list) -> list[int]:  # noqa: ANN001
    """The first two runs start on the two nodes; the first one's node is removed while it
    computes (it is the longest: it is still computing when the second has started)."""
    windows = [2000, 300, 2, 2, 2, 2]
    subs = [jobs.submit(store, spec(files, f"0.{i + 1}", n)) for i, n in enumerate(windows)]
    for baseline in {s.baseline_id for s in subs}:  # the runs are the subject here
        assert jobs.request_cancel(store, baseline) == "cancelled"
    ids = [s.run_id for s in subs]
    long_runs = ids[:2]

    def both_started_first_computes() -> bool:
        stage = (store.control.live([ids[0]]).get(ids[0], {}).get("progress") or {}).get("stage")
        return all(node_of(store, i) for i in long_runs) and str(stage).startswith("perplexity")

    step_until(dispatcher, both_started_first_computes, 120, "both runs to start")
    spread = {node_of(store, i) for i in long_runs}
    assert len(spread) == 2  # one on each worker node
    lost_run = long_runs[0]
    lost_node = next(n for n in nodes if n.node_id.startswith(node_of(store, lost_run)))
    head.remove_node(lost_node)
    step_until(dispatcher, lambda: not dispatcher.inflight and all(
        s not in jobs.ACTIVE for s in statuses(store, ids).values()), 120, "every run to end")
    assert set(statuses(store, ids).values()) == {"done"}, statuses(store, ids)
    retried = [line for line in log_of(store, lost_run) if line.startswith(REQUEUED)]
    assert len(retried) == 1 and "retry 1 of 1" in retried[0], retried
    assert f"node {lost_node.node_id[:12]}) pid" in retried[0] and "left the Ray cluster" in \
        retried[0]
    assert not lost_node.node_id.startswith(node_of(store, lost_run))  # ran on the other node
    stored_once(store, ids)
    return ids


def lost_dispatcher(store: Store, dead: Dispatcher, files: dict[str, Path]) -> None:
    """A dispatcher stops stepping mid-run (as if dead); the next one queues its run again and
    runs it, while the old task still finishes; when the old dispatcher wakes and reports its
    result, the run keeps the one stored."""
    submission = jobs.submit(store, spec(files, "0.95", 300))
    run_id = submission.run_id
    assert jobs.request_cancel(store, submission.baseline_id) == "cancelled"
    step_until(dead, lambda: bool(node_of(store, run_id)), 60, "the run to start")
    successor = Dispatcher(store, name="ray-dispatcher successor")
    assert successor.recover() == [run_id]
    assert statuses(store, [run_id])[run_id] == "queued"
    assert "the Ray dispatcher running it stopped" in log_of(store, run_id)[-1]
    step_until(successor, lambda: statuses(store, [run_id])[run_id] == "done", 90,
               "the successor to run it")
    lost = dead.inflight[run_id].ref
    assert ray.wait([lost], timeout=60)[0]  # the lost task ends too, with its own result
    dead.step()  # ... which the old dispatcher, woken, hands over: the run is done already
    assert not dead.inflight and statuses(store, [run_id])[run_id] == "done"
    stored_once(store, [run_id])


def statuses(store: Store, ids: list[int]) -> dict[int, str]:
    frame = store.frame(f"SELECT id, status FROM runs WHERE id IN ({', '.join(map(str, ids))})")
    return dict(zip(frame["id"].astype(int), frame["status"], strict=True))


def stored_once(store: Store, ids: list[int]) -> None:
    """One perplexity row per run and dataset."""
    ppl = queries.metric_rows(store, "perplexity", run_ids=ids)
    assert sorted(ppl["run_id"]) == sorted(ids), ppl[["run_id", "dataset"]]


def test_the_cluster_summary_and_the_runs_page_line(tmp_path: Path) -> None:
    nodes = [{"NodeID": "a" * 56, "NodeManagerHostname": "gpu-1", "NodeManagerAddress": "10.0.0.1",
              "Alive": True, "Resources": {"CPU": 16.0, "GPU": 8.0, "memory": 2 * 1024**4}},
             {"NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2", "Alive": False,
              "Resources": {"CPU": 4.0}}]
    summary = clusters.summarize(nodes, "head:6379", "127.0.0.1:8265")
    clusters.write_summary(tmp_path / "r.duckdb", summary)
    assert clusters.read_summary(tmp_path / "r.duckdb") == summary
    line = clusters.line(clusters.read_summary(tmp_path / "r.duckdb"))
    assert line.startswith("Runs execute on Ray (head:6379): 1 node, 16 CPUs, 8 GPUs (gpu-1:")
    assert "[Ray dashboard](http://127.0.0.1:8265)" in line
    env = clusters.runtime_environment()
    assert env["py_modules"] == [str(config.REPO_ROOT / "core")]
    assert env["env_vars"]["SPARSEBENCH_EXECUTOR"] == "local"
