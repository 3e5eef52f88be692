"""Live progress: stage plans and their weights, the overall fraction, the tracker's payloads
and the time-left estimate (``core.runs.progress``), and how the Runs page words them."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.present import runs as run_views
from core.runs import costs, progress, registry
from core.runs.kinds.activation import ActivationSpec
from core.runs.kinds.prune import PruneSpec
from core.runs.kinds.search import SearchSpec
from core.runs.progress import (
    Estimate,
    Stage,
    Timing,
    Tracker,
    estimate,
    overall,
    throttled,
    weights,
)


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


PLAN = [Stage("loading model", 10), Stage("pruning", 60, "block"),
        Stage("perplexity a.txt", 30, "window")]


def timing(**values: float) -> Timing:
    base = {"at": 100.0, "stage_s": 0.0, "finished_s": 0.0, "finished_weight": 0.0,
            "weight": 1.0, "later_weight": 0.0}
    return Timing(**{**base, **values})


# -- weights and the fraction ---------------------------------------------------------------------
def test_weights_are_shares_of_the_cost() -> None:
    assert weights(PLAN) == pytest.approx([0.1, 0.6, 0.3])
    assert weights([Stage("a", 0), Stage("b", 0)]) == [0.5, 0.5]  # nothing known: equal shares
    assert weights([Stage("a", -1), Stage("b", 3)]) == [0.0, 1.0]
    assert weights([]) == []


def test_overall_fraction_adds_finished_stages_and_this_ones_part() -> None:
    assert overall(0.0, 0.1, 0, 1) == 0.0
    assert overall(0.1, 0.6, 15, 30) == pytest.approx(0.4)
    assert overall(0.7, 0.3, 9, 8) == pytest.approx(1.0)  # never past the end
    assert overall(0.1, 0.6, 3, 0) == pytest.approx(0.1)  # no total: the stage counts as 0


def test_stage_matches_its_name_or_first_words() -> None:
    stage = Stage("zero-shot", 1, "task")
    assert stage.matches("zero-shot") and stage.matches("zero-shot piqa")
    assert not stage.matches("zero-shots") and not Stage("task", 1).matches("tasks")


# -- the estimate ---------------------------------------------------------------------------------
def test_no_estimate_at_the_start_of_a_stage() -> None:
    assert estimate(0, 30, timing(stage_s=5.0), now=100.0) == Estimate(None, None)
    assert estimate(0, 0, timing(stage_s=5.0), now=100.0) == Estimate(None, None)


def test_estimate_after_k_of_n_blocks() -> None:
    # 10 s of loading (10% of the plan), then 6 of 30 blocks of pruning (60%) in 12 s.
    found = estimate(6, 30, timing(stage_s=12.0, finished_s=10.0, finished_weight=0.1,
                                   weight=0.6, later_weight=0.3), now=100.0)
    assert found.rate == pytest.approx(0.5)
    # 24 blocks left at 0.5 blocks/s = 48 s; 22 s bought 0.1 + 0.6 * 6 / 30 = 0.22 of the plan,
    # so the later 0.3 take 30 s.
    assert found.left_s == pytest.approx(48 + 30)


def test_estimate_counts_down_between_updates() -> None:
    at_update = estimate(6, 30, timing(stage_s=12.0), now=100.0)
    later = estimate(6, 30, timing(stage_s=12.0), now=110.0)
    # 2 s a block: the stage's part counts down for at most one block's time, then holds
    assert estimate(6, 30, timing(stage_s=12.0), now=101.5).left_s == pytest.approx(
        at_update.left_s - 1.5)
    assert later.left_s == pytest.approx(at_update.left_s - 2)
    stuck = estimate(29, 30, timing(stage_s=58.0), now=1e9)
    assert stuck.left_s == progress.MIN_LEFT_S  # work remains: never 0 s
    assert estimate(30, 30, timing(stage_s=60.0), now=1e9).left_s == 0.0


def test_a_stage_with_zero_elapsed_time_gives_no_estimate() -> None:
    assert estimate(3, 30, timing(stage_s=0.0), now=100.0) == Estimate(None, None)


def test_a_clock_going_backwards_is_ignored() -> None:
    at_update = estimate(6, 30, timing(stage_s=12.0), now=100.0)
    assert estimate(6, 30, timing(stage_s=12.0), now=40.0) == at_update
    clock = Clock(50.0)
    tracker = Tracker(PLAN, clock=clock, wall=lambda: 100.0)
    tracker.report("loading model", 0, 1)
    clock.now = 60.0
    tracker.report("pruning", 0, 30)
    clock.now = 58.0  # the clock went back 2 s: no negative durations
    payload = tracker.report("pruning", 1, 30)
    assert payload["stage_s"] == 0.0 and payload["finished_s"] == 10.0
    clock.now = 64.0
    assert tracker.report("pruning", 2, 30)["stage_s"] == 4.0


def test_payload_timing_is_read_defensively() -> None:
    assert Timing.from_payload({"stage": "pruning"}) is None
    assert Timing.from_payload({**timing().__dict__, "at": "soon"}) is None
    assert Timing.from_payload({**timing().__dict__, "stage_s": float("nan")}) is None
    assert Timing.from_payload(timing(stage_s=2.0).__dict__) == timing(stage_s=2.0)


# -- the tracker ----------------------------------------------------------------------------------
def test_tracker_moves_through_the_plan() -> None:
    clock = Clock()
    tracker = Tracker(PLAN, clock=clock, wall=lambda: 1000.0)
    first = tracker.report("loading model", 0, 1)
    assert (first["step"], first["steps"], first["fraction"], first["unit"]) == (1, 3, 0.0, "")
    clock.now = 10.0
    tracker.report("pruning", 0, 30)
    clock.now = 22.0
    payload = tracker.report("pruning", 6, 30)
    assert payload["fraction"] == pytest.approx(0.1 + 0.6 * 6 / 30)
    assert payload["unit"] == "block"
    assert Timing.from_payload(payload) == timing(at=1000.0, stage_s=12.0, finished_s=10.0,
                                                  finished_weight=0.1, weight=0.6,
                                                  later_weight=0.3)
    clock.now = 70.0
    payload = tracker.report("perplexity a.txt", 2, 8)
    assert payload["step"] == 3 and payload["finished_s"] == 70.0
    assert payload["fraction"] == pytest.approx(0.7 + 0.3 / 4)


def test_tracker_skips_stages_that_do_not_come_and_never_goes_back() -> None:
    tracker = Tracker(PLAN, clock=Clock())
    assert tracker.report("pruning", 3, 30)["step"] == 2  # loading never reported
    assert tracker.report("loading model", 0, 1)["step"] == 2  # not back
    payload = tracker.report("something new", 1, 2)  # unknown: stays on the current step
    assert payload["step"] == 2 and payload["unit"] == ""


def test_tracker_without_a_plan_counts_each_stage_alone() -> None:
    clock = Clock()
    tracker = Tracker(None, clock=clock)
    assert tracker.report("a", 1, 4)["fraction"] == 0.25
    clock.now = 5.0
    payload = tracker.report("b", 1, 2)
    assert (payload["step"], payload["steps"], payload["fraction"]) == (2, None, 0.5)
    assert payload["later_weight"] == 0 and payload["finished_s"] == 5.0


def test_throttled_reports_track_every_step_but_send_few() -> None:
    sent: list[tuple[str, int, int]] = []
    clock = Clock()
    tracker = Tracker(PLAN, clock=clock)
    progress = throttled(tracker, lambda s, d, t, _p: sent.append((s, d, t)), 0.5, clock=clock)
    progress("loading model", 0, 1)
    progress("pruning", 0, 30)  # a new stage always goes
    progress("pruning", 1, 30)  # throttled
    clock.now = 1.0
    progress("pruning", 2, 30)
    progress("pruning", 30, 30)  # a stage's end always goes
    assert sent == [("loading model", 0, 1), ("pruning", 0, 30), ("pruning", 2, 30),
                    ("pruning", 30, 30)]


# -- the plans of the run kinds -------------------------------------------------------------------
def keys(spec: object) -> list[str]:
    return [s.key for s in registry.stage_plan(spec)]


def test_prune_plan_follows_the_spec() -> None:
    spec = PruneSpec(method="wanda", ppl_datasets=["wiki-offline", "ptb"],
                     zero_shot_tasks=["sb_everyday"], save_dir="/tmp/x")
    assert keys(spec) == ["loading model", "calibration data", "capturing block inputs",
                          "pruning", "saving model", "perplexity wiki-offline",
                          "perplexity ptb", "zero-shot sb_everyday"]
    assert keys(PruneSpec(method="magnitude")) == ["loading model", "pruning",
                                                   "perplexity wiki-offline"]
    assert keys(PruneSpec(method="magnitude", owl={"M": 5, "lambda": 0.08}))[1:5] == [
        "calibration data", "capturing block inputs", "OWL outlier ratios", "pruning"]
    dense = PruneSpec(method="dense", sparsity="0", samples=0, seqlen=0, calibration="")
    assert keys(dense) == ["loading model", "perplexity wiki-offline"]


def test_prune_plan_weights_scale_with_the_work() -> None:
    small = dict(zip(keys(spec := PruneSpec(method="wanda", samples=8)),
                     weights(registry.stage_plan(spec)), strict=True))
    big = dict(zip(keys(spec := PruneSpec(method="wanda", samples=128)),
                   weights(registry.stage_plan(spec)), strict=True))
    assert big["pruning"] > small["pruning"]
    assert big["perplexity wiki-offline"] < small["perplexity wiki-offline"]
    sparsegpt = registry.stage_plan(PruneSpec(method="sparsegpt", samples=8))
    wanda = registry.stage_plan(PruneSpec(method="wanda", samples=8))
    assert sparsegpt[3].cost > wanda[3].cost  # SparseGPT's solve costs more than Wanda's sort
    assert all(s.cost > 0 for s in sparsegpt)


def test_task_examples_know_the_offline_tasks_and_seed_000s() -> None:
    assert costs.task_examples("sb_everyday", None) == 40
    assert costs.task_examples("sb_everyday", 10) == 10
    assert costs.task_examples("sb_everyday", 1000) == 40
    assert costs.task_examples("piqa", None) == 1838  # its validation split
    assert costs.task_examples("piqa", 25) == 25
    assert costs.task_examples("winogrande", None) == costs.EXAMPLES_GUESS  # not known here
    assert costs.task_s("sb_wiki_next", None) > costs.task_s("sb_everyday", None)


def test_activation_and_search_plans() -> None:
    spec = ActivationSpec(method="coreinfer", tasks=["sb_everyday", "sb_wiki_next"],
                          ppl_datasets=["wiki-offline"])
    assert keys(spec) == ["loading model", "task", "perplexity wiki-offline"]
    search = SearchSpec(sum_weights=[0.2, 0.4], n_search=10, full_limit=20)
    plan = registry.stage_plan(search)
    assert [s.key for s in plan] == ["loading model", "calibration scores",
                                     "CoreInfer on the full set", "search configurations",
                                     "best configuration on the full set",
                                     "AVG on the full set"]
    assert plan[3].unit == "configuration"


def assert_follows_plan(spec: object, reports: list[tuple[str, int, int]]) -> None:
    """Every report of a run is a stage of its plan, in the plan's order, every stage of the
    plan comes, and the last report ends the bar."""
    plan = registry.stage_plan(spec)
    tracker = Tracker(plan)
    payloads = [tracker.report(*r) for r in reports]
    for report, payload in zip(reports, payloads, strict=True):
        assert plan[payload["step"] - 1].matches(report[0]), (report, [s.key for s in plan])
    assert sorted({p["step"] for p in payloads}) == list(range(1, len(plan) + 1)), reports
    assert payloads[-1]["fraction"] == 1.0, reports[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tests.tiny_assets import model_and_text

    return model_and_text(tmp_path_factory.mktemp("progress-assets"))


@pytest.mark.parametrize("change", [
    {"method": "wanda", "owl": {"M": 5, "lambda": 0.08}, "save_dir": "saved",
     "zero_shot_tasks": ["sb_everyday"], "zs_limit": 2},
    {"method": "magnitude"},
    {"method": "dense", "sparsity": "0", "samples": 0, "seqlen": 0, "calibration": ""},
], ids=["wanda-owl-save-zero-shot", "magnitude", "dense"])
def test_every_report_of_a_prune_run_follows_its_plan(tiny: dict[str, str], tmp_path,
                                                      change: dict) -> None:
    values = {"model": tiny["model"], "calibration": tiny["text"], "samples": 2, "seqlen": 16,
              "ppl_datasets": [tiny["text"], tiny["text"] + "-copy.txt"], "ppl_seqlen": 16,
              "max_windows": 3, "batch_size": 2, **change}
    Path(values["ppl_datasets"][1]).write_text(Path(tiny["text"]).read_text())
    if "save_dir" in values:
        values["save_dir"] = str(tmp_path / "saved")
    spec = PruneSpec(**values)
    reports: list[tuple[str, int, int]] = []
    registry.execute(spec, lambda *r: reports.append(r), lambda _line: None)
    assert_follows_plan(spec, reports)


def test_every_report_of_an_activation_run_follows_its_plan(tiny: dict[str, str]) -> None:
    spec = ActivationSpec(model=tiny["model"], method="coreinfer", tasks=["sb_everyday"],
                          limit=2, ppl_datasets=[tiny["text"]], ppl_seqlen=16, max_windows=2)
    reports: list[tuple[str, int, int]] = []
    registry.execute(spec, lambda *r: reports.append(r), lambda _line: None)
    assert_follows_plan(spec, reports)


# -- how the Runs page says it --------------------------------------------------------------------
def test_progress_text_says_time_left_and_rate() -> None:
    clock = Clock()
    tracker = Tracker(PLAN, clock=clock, wall=lambda: 1000.0)
    tracker.report("loading model", 0, 1)
    clock.now = 10.0
    payload = {"stage": "pruning", "done": 0, "total": 30, **tracker.report("pruning", 0, 30)}
    shown = run_views.parse_progress(payload, now=1000.0)
    assert shown.label == "pruning: block 0 of 30 · estimating…"
    assert shown.fraction == pytest.approx(0.1)
    clock.now = 22.0
    payload = {"stage": "pruning", "done": 6, "total": 30, **tracker.report("pruning", 6, 30)}
    shown = run_views.parse_progress(payload, now=1000.0)
    assert shown.label == "pruning: block 6 of 30 · ≈ 1 min 18 s left · 0.5 blocks/s"
    # 30 s on without a new block: one block's time (2 s) is counted off, no more (a block
    # slower than the others holds the estimate instead of running it down to 0)
    assert run_views.parse_progress(payload, now=1030.0).timing.startswith("≈ 1 min 16 s left")


@pytest.mark.parametrize(("rate", "unit", "text"), [
    (0.8, "block", "0.8 blocks/s"), (12.3, "window", "12 windows/s"),
    (0.04, "task", "1 task per 25 s"), (None, "block", ""), (2.0, "", "")])
def test_rate_text(rate: float | None, unit: str, text: str) -> None:
    assert run_views.rate_text(rate, unit) == text


def test_old_payloads_keep_their_text_and_show_no_timing() -> None:
    shown = run_views.parse_progress({"stage": "pruning", "done": 3, "total": 30})
    assert shown.label == "pruning: block 3 of 30" and shown.fraction == pytest.approx(0.1)
    assert shown.timing == ""


def test_default_run_prefers_running_then_queued_then_newest() -> None:
    import pandas as pd

    def runs(*statuses: str) -> pd.DataFrame:  # newest first
        return pd.DataFrame({"Run": list(range(len(statuses), 0, -1)), "Status": statuses})

    assert run_views.default_run(runs("queued", "running", "done")) == 2
    assert run_views.default_run(runs("queued", "cancelling", "done")) == 2
    assert run_views.default_run(runs("done", "queued", "queued", "failed")) == 3
    assert run_views.default_run(runs("failed", "done")) == 2
    finished = runs("done", "done", "done").assign(method=["dense", "wanda", "dense"])
    assert run_views.default_run(finished) == 2  # the run, not the baseline queued after it



def test_a_slow_stage_shows_a_bar_that_moves_and_a_time_left_that_only_shrinks() -> None:
    """A fake stage of 8 units, the fourth three times slower than the others, read every
    0.25 s: the bar moves with each unit, the time left never grows within the stage and
    never reads 0 s before the last unit is done."""
    clock = Clock(0.0)
    plan = [Stage("loading model", 1.0), Stage("zero-shot piqa", 8.0, "request")]
    tracker = Tracker(plan, clock=clock, wall=clock)
    tracker.report("loading model", 0, 1)
    clock.now = 1.0
    durations = [1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    payload = tracker.report("zero-shot piqa", 0, 8)
    fractions, lefts, done = [payload["fraction"]], [], 0
    ends = [1.0 + sum(durations[:i + 1]) for i in range(8)]
    while clock.now < ends[-1]:
        clock.now = round(clock.now + 0.25, 2)
        if done < 8 and clock.now >= ends[done]:
            done += 1
            payload = tracker.report("zero-shot piqa", done, 8)
            fractions.append(payload["fraction"])
        shown = run_views.parse_progress({"stage": "zero-shot piqa", "done": done, "total": 8,
                                          "unit": "request", **payload}, now=clock.now)
        if shown.estimate.left_s is not None:
            lefts.append((done, shown.estimate.left_s))
    assert fractions == sorted(fractions) and len(set(fractions)) == 9  # moves with each unit
    steady = [left for d, left in lefts if d >= 4]  # once the slow unit is measured
    assert all(b <= a + 1e-9 for a, b in zip(steady, steady[1:], strict=False))
    assert all(left > 0 for d, left in lefts if d < 8)
    assert lefts[-1] == (8, 0.0)
