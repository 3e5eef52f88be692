"""The report for stored runs against a golden Markdown text derived here from the stored rows;
LaTeX / Markdown exports that parse back to the same numbers; the compare tables; the Report and
Compare pages under AppTest (published data only, own runs, empty store)."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.present import compare, export, report, tables
from core.runs.kinds.prune import PruneSpec
from core.store import published, queries
from core.store.db import Store
from core.store.record import create_run

ROOT = Path(__file__).resolve().parent.parent
MODEL = PruneSpec().model
TASKS = ["piqa", "boolq", "rte"]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "results.duckdb"
    monkeypatch.setenv("SPARSEBENCH_DB", str(path))
    return path


@pytest.fixture
def store(db: Path) -> Store:
    store = Store().init()
    published.sync(store)
    return store


@pytest.fixture
def empty(db: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setattr(published, "FIGURES", db.parent / "none.csv")
    monkeypatch.setattr(published, "TRIALS", db.parent / "none-trials.csv")
    return Store().init()


def own_run(store: Store, method: str, sparsity: str, metrics: list[dict],
            layer_stats: list[dict] | None = None) -> int:
    spec = PruneSpec(method=method, sparsity=sparsity, zero_shot_tasks=TASKS)
    run_id = create_run(store, spec, status="done")
    store.add_metrics(run_id, metrics)
    store.add_layer_stats(run_id, layer_stats or [])
    return run_id


def ppl(value: float | None) -> dict:
    if value is None:
        return {"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl", "value": None,
                "status": "diverged", "note": "non-finite loss: the model diverged"}
    return {"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl", "value": value}


def zs(task: str, value: float | None) -> dict:
    if value is None:
        return {"kind": "zero_shot", "dataset": task, "metric": "acc", "value": None,
                "status": "missing", "note": "task failed: ConnectionError"}
    return {"kind": "zero_shot", "dataset": task, "metric": "acc", "value": value}


def block_rows(values: list[float]) -> list[dict]:
    rows = [{"block": b, "layer": "block", "stat": "sparsity", "value": v}
            for b, v in enumerate(values)]
    low, high = values.index(min(values)), values.index(max(values))
    return rows + [
        {"block": None, "layer": "model", "stat": "mean", "value": statistics.fmean(values)},
        {"block": None, "layer": "model", "stat": "std", "value": statistics.pstdev(values)},
        {"block": low, "layer": "model", "stat": "min", "value": values[low]},
        {"block": high, "layer": "model", "stat": "max", "value": values[high]},
        {"block": None, "layer": "model", "stat": "overall", "value": statistics.fmean(values)}]


@pytest.fixture
def runs(store: Store) -> dict[str, int]:
    """Dense, Magnitude 50% (rte failed), Wanda 50% with layer statistics, Wanda 70% diverged."""
    return {
        "dense": own_run(store, "dense", "0", [ppl(20.0), zs("piqa", 0.70), zs("boolq", 0.62),
                                               zs("rte", 0.55)]),
        "mag50": own_run(store, "magnitude", "0.5", [ppl(35.0), zs("piqa", 0.60),
                                                     zs("boolq", 0.62), zs("rte", None)]),
        "wanda50": own_run(store, "wanda", "0.5", [ppl(24.0), zs("piqa", 0.66),
                                                   zs("boolq", 0.64), zs("rte", 0.50)],
                           block_rows([0.49, 0.50, 0.51])),
        "wanda70": own_run(store, "wanda", "0.7", [ppl(None), zs("piqa", 0.52),
                                                   zs("boolq", 0.40), zs("rte", 0.47)]),
    }


def frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (tables.load_metrics(store, "perplexity"), tables.load_metrics(store, "zero_shot"),
            tables.load_layer_stats(store))


# -- the golden report ----------------------------------------------------------------------------
def p2(x: float) -> str:
    return f"{x * 100:.2f}%"


def full(x: float, signed: bool = False) -> str:
    """A number as the downloads write it: 4 decimals, trailing zeros dropped down to 2."""
    text = f"{x:+.4f}" if signed else f"{x:.4f}"
    while text.endswith("0") and len(text.split(".")[1]) > 2:
        text = text[:-1]
    return text


def fp(x: float) -> str:
    """A fraction as a percentage, as the downloads write it."""
    return full(x * 100) + "%"


def golden(store: Store, ids: dict[str, int]) -> str:
    """The expected report, written from the stored rows with the report's stated formulas."""
    rows = queries.metric_rows(store)
    value = {(r["run_id"], r["dataset"]): r["value"] for r in rows.to_dict("records")
             if r["status"] == "ok"}
    d, m5, w5, w7 = ids["dense"], ids["mag50"], ids["wanda50"], ids["wanda70"]
    P = {k: value[(ids[k], "wikitext2")] for k in ("dense", "mag50", "wanda50")}

    def acc(run: int, tasks: list[str]) -> float:
        return sum(value[(run, t)] for t in tasks) / len(tasks)

    def rel(a: float, b: float) -> float:
        return (a - b) / b * 100

    both = ["piqa", "boolq"]  # magnitude's rte failed
    spec = PruneSpec(method="wanda", sparsity="0.5", zero_shot_tasks=TASKS).to_dict()
    evaluation = tables.zs_evaluation_label(spec)
    dense_all, mag, wanda5, wanda7 = acc(d, TASKS), acc(m5, both), acc(w5, TASKS), acc(w7, TASKS)
    blocks = [0.49, 0.50, 0.51]

    def change(run: int, task: str) -> tuple[float, float]:
        s, b = value[(run, task)], value[(d, task)]
        return (s - b) * 100, (s - b) / b * 100

    mp, mb = change(m5, "piqa"), change(m5, "boolq")
    wp, wb, wr = change(w5, "piqa"), change(w5, "boolq"), change(w5, "rte")
    sp, sb, sr = change(w7, "piqa"), change(w7, "boolq"), change(w7, "rte")
    assert mb == (0.0, 0.0) and wr[0] < wp[0] < 0 < wb[0] and sb[0] < sp[0] < sr[0] < 0
    assert wr[1] < wp[1] and sb[1] < sp[1] < sr[1]
    return f"""# Report: {MODEL}

*Source: own runs. {report.INTRO} Zero-shot evaluation of own runs: {evaluation}.*

## Perplexity Results (WikiText-2)

| Method | PPL | Δ from dense | Note |
| --- | --- | --- | --- |
| Dense (Baseline) | {full(P['dense'])} | baseline |  |
| Magnitude 50% | {full(P['mag50'])} | {full(rel(P['mag50'], P['dense']), signed=True)}% |  |
| Wanda 50% | {full(P['wanda50'])} | {full(rel(P['wanda50'], P['dense']), signed=True)}% |  |
| Wanda 70% | diverged | diverged | non-finite loss: the model diverged |

*{report.PPL_NOTE}*

## Zero-Shot Accuracy

| Method | Accuracy | Retention | Note |
| --- | --- | --- | --- |
| Dense (Baseline) | {fp(dense_all)} | 100.00% |  |
| Magnitude 50% | {fp(mag)} | {fp(mag / acc(d, both))} | average over 2 of 3 tasks (rte failed; \
not counted); retention over the 2 tasks shared with dense run {d} |
| Wanda 50% | {fp(wanda5)} | {fp(wanda5 / dense_all)} |  |
| Wanda 70% | {fp(wanda7)} | {fp(wanda7 / dense_all)} |  |

*Average across 3 tasks: piqa, boolq, rte (Accuracy; computed from the per-task scores).*

*{tables.NOT_COUNTED}*

*{tables.OWN_ZS_BASELINE}*

## Key Findings

*{report.FINDINGS_NOTE}*

### 50% Sparsity

- **Magnitude 50%** has perplexity {P['mag50']:.2f} on WikiText-2, \
{rel(P['mag50'], P['dense']):.2f}% higher than Dense ({P['dense']:.2f}): worse.
- **Magnitude 50%** has average accuracy {p2(mag)}, {(acc(d, both) - mag) * 100:.2f} points \
lower than Dense ({p2(acc(d, both))}) over the 2 tasks both scored: worse; retention \
{p2(mag / acc(d, both))}.
- **Wanda 50%** has perplexity {P['wanda50']:.2f} on WikiText-2, \
{rel(P['wanda50'], P['dense']):.2f}% higher than Dense ({P['dense']:.2f}): worse.
- **Wanda 50%** has average accuracy {p2(wanda5)}, {(dense_all - wanda5) * 100:.2f} points lower \
than Dense ({p2(dense_all)}) over the 3 tasks both scored: worse; retention \
{p2(wanda5 / dense_all)}.
- **Wanda 50%** has perplexity {P['wanda50']:.2f} on WikiText-2, \
{-rel(P['wanda50'], P['mag50']):.2f}% lower than Magnitude 50% ({P['mag50']:.2f}): better.
- **Wanda 50%** has average accuracy {p2(acc(w5, both))}, {(acc(w5, both) - mag) * 100:.2f} \
points higher than Magnitude 50% ({p2(mag)}) over the 2 tasks both scored: better.
- Most affected task for **Magnitude 50%** by absolute change: piqa, {-mp[0]:.2f} points lower \
than Dense: worse.
- Least affected task for **Magnitude 50%** by absolute change: boolq, no change against Dense \
(0.00 points).
- Most affected task for **Magnitude 50%** by relative change: piqa, {-mp[1]:.2f}% lower than \
Dense: worse.
- Least affected task for **Magnitude 50%** by relative change: boolq, no change against Dense \
(0.00%).
- Left out of **Magnitude 50%**'s task comparisons: rte (no score for Magnitude 50%).
- Most affected task for **Wanda 50%** by absolute change: rte, {-wr[0]:.2f} points lower than \
Dense: worse.
- Least affected task for **Wanda 50%** by absolute change: boolq, {wb[0]:.2f} points higher \
than Dense: better.
- Most affected task for **Wanda 50%** by relative change: rte, {-wr[1]:.2f}% lower than Dense: \
worse.
- Least affected task for **Wanda 50%** by relative change: boolq, {wb[1]:.2f}% higher than \
Dense: better.

### 70% Sparsity

- **Wanda 70%** diverged on WikiText-2 (no finite perplexity); Dense has {P['dense']:.2f}.
- **Wanda 70%** has average accuracy {p2(wanda7)}, {(dense_all - wanda7) * 100:.2f} points lower \
than Dense ({p2(dense_all)}) over the 3 tasks both scored: worse; retention \
{p2(wanda7 / dense_all)}.
- Most affected task for **Wanda 70%** by absolute change: boolq, {-sb[0]:.2f} points lower than \
Dense: worse.
- Least affected task for **Wanda 70%** by absolute change: rte, {-sr[0]:.2f} points lower than \
Dense: worse.
- Most affected task for **Wanda 70%** by relative change: boolq, {-sb[1]:.2f}% lower than \
Dense: worse.
- Least affected task for **Wanda 70%** by relative change: rte, {-sr[1]:.2f}% lower than Dense: \
worse.

## Per-Task Zero-Shot Breakdown

### 50% Sparsity

| Task | Dense | Magnitude | Wanda | Note |
| --- | --- | --- | --- | --- |
| piqa | {fp(value[(d, 'piqa')])} | {fp(value[(m5, 'piqa')])} | {fp(value[(w5, 'piqa')])} |  |
| boolq | {fp(value[(d, 'boolq')])} | {fp(value[(m5, 'boolq')])} | {fp(value[(w5, 'boolq')])} |  |
| rte | {fp(value[(d, 'rte')])} | failed | {fp(value[(w5, 'rte')])} | Magnitude: task failed: \
ConnectionError |

*{MODEL}, 50% sparsity, Accuracy per task.*

### 70% Sparsity

| Task | Dense | Wanda |
| --- | --- | --- |
| piqa | {fp(value[(d, 'piqa')])} | {fp(value[(w7, 'piqa')])} |
| boolq | {fp(value[(d, 'boolq')])} | {fp(value[(w7, 'boolq')])} |
| rte | {fp(value[(d, 'rte')])} | {fp(value[(w7, 'rte')])} |

*{MODEL}, 70% sparsity, Accuracy per task.*

## Layer Statistics

### Wanda 50% (run {w5})

| Statistic | Sparsity | Block |
| --- | --- | --- |
| Mean over blocks | {fp(statistics.fmean(blocks))} |  |
| Std over blocks | {fp(statistics.pstdev(blocks))} |  |
| Lowest block | {fp(min(blocks))} | 0 |
| Highest block | {fp(max(blocks))} | 2 |
| Overall (all prunable weights) | {fp(statistics.fmean(blocks))} |  |

*Std is the population standard deviation of the per-block sparsities.*

- Measured sparsity over 3 blocks: mean {p2(statistics.fmean(blocks))}, standard deviation \
{statistics.pstdev(blocks) * 100:.2f} points, lowest {p2(min(blocks))} (block 0), highest \
{p2(max(blocks))} (block 2).
- Sparsity differs between blocks: range {(max(blocks) - min(blocks)) * 100:.2f} points, \
standard deviation {statistics.pstdev(blocks) * 100:.2f} points.
- Sparsity rises from the early blocks to the late ones (first third of the blocks \
{p2(blocks[0])}, last third {p2(blocks[-1])}, least-squares slope \
{(blocks[-1] - blocks[0]) / 2 * 100:+.2f} points per block).
- The mean block sparsity equals the 50% target at two decimals.
"""


def test_report_for_stored_runs_equals_the_golden_markdown(store: Store,
                                                           runs: dict[str, int]) -> None:
    ppl_rows, zs_rows, stats = frames(store)
    assert report.subjects(ppl_rows, zs_rows, stats)[0] == (MODEL, tables.OWN_GROUP)
    evaluation = report.default_evaluation(zs_rows, MODEL, tables.OWN_GROUP)
    built = report.build(ppl_rows, zs_rows, stats, MODEL, tables.OWN_GROUP, "acc", evaluation)
    expected = golden(store, runs)
    got = built.markdown()
    assert got.splitlines() == expected.splitlines()
    assert got == expected
    assert "nan" not in got.lower() and "improves" not in got


def test_published_seed_000_report_corrects_the_seed_findings(store: Store) -> None:
    group = "Seed report 000 (Llama-2-7b final report)"
    built = report.build(*frames(store), "Llama-2-7b-hf", group)
    text = built.markdown()
    for heading in ("## Perplexity Results (WikiText-2)", "## Zero-Shot Accuracy",
                    "## Key Findings", "### 30% Sparsity", "### 70% Sparsity",
                    "## Per-Task Zero-Shot Breakdown"):
        assert heading in text
    assert "| Magnitude 70% | diverged | diverged |" in text
    assert ("**Wanda 30%** has average accuracy 69.08%, 0.01 points lower than Magnitude 30% "
            "(69.09%) over the 5 tasks both scored: worse.") in text
    assert ("**Wanda 70%** has perplexity 68.80 on WikiText-2 while Magnitude 70% diverged, so "
            "no relative change is defined.") in text
    bullets = "\n".join(line for line in text.splitlines() if line.startswith("- "))
    assert "nan" not in bullets.lower() and "improves by" not in text  # the notes quote the seed


def test_published_seed_002_layer_statistics(store: Store) -> None:
    built = report.build(*frames(store), "Llama-3.1-8B", "Seed report 002 (Llama-3.1-8B analysis)")
    text = built.markdown()
    assert "## Layer Statistics" in text and "practically uniform" in text
    assert "adapts pruning" not in text.split("| Note |")[0]
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert bullets and not any("adapt" in b or "lower sparsity" in b for b in bullets)


# -- exports parse back to the same numbers --------------------------------------------------------
def test_report_tables_export_and_parse_back(store: Store, runs: dict[str, int]) -> None:
    built = report.build(*frames(store), MODEL, tables.OWN_GROUP)
    shown_tables = [b.table for b in built.blocks if b.kind == "table"]
    assert len(shown_tables) == 5
    for table in shown_tables:
        shown = table.display()
        latex = export.to_latex(shown, table.numeric_columns, caption="A table: 50% · Δ",
                                label="tab:x")
        assert latex.count("\\toprule") == latex.count("\\midrule") == 1
        for back in (export.parse_latex(latex), export.parse_markdown(export.to_markdown(shown))):
            assert list(back.columns) == list(shown.columns)
            assert back.values.tolist() == shown.values.tolist()
            for column in table.numeric_columns:
                if column not in shown:
                    continue
                for text, number in zip(back[column], table.frame[column], strict=True):
                    parsed = export.cell_number(text)
                    if parsed is None:
                        assert text in ("", "baseline", "diverged", "failed", "—", "no value")
                        continue
                    kind = table.formats[column]
                    scale = 100 if kind == "pct" else 1
                    assert parsed == pytest.approx(round(number * scale, 2), abs=1e-9)


def test_latex_escapes_every_special_character() -> None:
    frame = pd.DataFrame({"A_b": ["50% & 2:4 · Δ − ×", "x\\y {z} $1 #2 ~ ^ |a| <b>", ""],
                          "PPL": ["6.42", "—", "diverged"]})
    latex = export.to_latex(frame, ["PPL"])
    assert "\\begin{tabular}{lr}" in latex
    body = latex.split("\\midrule")[1].split("\\bottomrule")[0]
    for char in "%_#":  # only ever escaped
        assert re.search(r"(?<!\\)" + re.escape(char), body) is None, char
    for row in body.strip().splitlines():  # unescaped & only between the two columns
        assert len(re.findall(r"(?<!\\)&", row)) == 1, row
    for escaped in ("\\textbackslash{}y", "\\{z\\}", "\\$1", "\\#2", "\\textasciitilde{}",
                    "\\textasciicircum{}", "\\textbar{}a\\textbar{}", "\\textless{}b",
                    "\\textemdash{}"):
        assert escaped in body, escaped
    assert "50\\% \\& 2:4 $\\cdot$ $\\Delta$ $-$ $\\times$" in latex
    assert export.parse_latex(latex).values.tolist() == frame.values.tolist()
    assert list(export.parse_latex(latex).columns) == ["A_b", "PPL"]


def test_markdown_and_latex_of_the_perplexity_table_keep_the_numbers(store: Store) -> None:
    table = tables.perplexity_table(tables.load_metrics(store, "perplexity"))
    shown = table.display()
    for back in (export.parse_latex(export.to_latex(shown, table.numeric_columns)),
                 export.parse_markdown(export.to_markdown(shown))):
        numbers = [export.cell_number(t) for t in back["PPL"]]
        expected = [None if math.isnan(v) else round(v, 2) for v in table.frame["PPL"]]
        assert numbers == expected


# -- compare ---------------------------------------------------------------------------------------
def test_compare_table_differences(store: Store, runs: dict[str, int]) -> None:
    metrics = tables.prepare(queries.metric_rows(store))
    table = compare.compare_table(metrics, [runs["mag50"], runs["wanda50"], runs["wanda70"]])
    shown = table.display().set_index("Metric")
    w5, m5, w7 = runs["wanda50"], runs["mag50"], runs["wanda70"]
    diff = f"Δ #{w5} vs #{m5}"
    assert shown.loc["Perplexity · WT2", diff] == f"{(24 - 35) / 35 * 100:+.2f}% (better)"
    assert shown.loc["Zero-shot · piqa (Accuracy)", diff] == "+6.00 pts (better)"
    assert shown.loc["Zero-shot · boolq (Accuracy)", diff] == "+2.00 pts (better)"
    assert shown.loc["Zero-shot · rte (Accuracy)", diff] == ""  # magnitude's rte failed
    assert shown.loc["Perplexity · WT2", f"Δ #{w7} vs #{m5}"] == ""
    column = next(c for c in shown.columns if c.startswith(f"#{w7} "))
    assert shown.loc["Perplexity · WT2", column] == "diverged"
    settings = compare.spec_table(store.runs(), [m5, w5]).display().set_index("Setting")
    assert settings.loc["method", "Differs"] == "yes"
    assert settings.loc["seqlen", "Differs"] == ""
    assert list(settings.index[:1]) == ["method"]


def test_compare_adds_baselines_names_metrics_in_words_and_treats_blank_as_blank(
        store: Store, runs: dict[str, int]) -> None:
    """Issue 37's Compare: a picked run brings its dense baseline; published runs are named by
    source and table; timing keys read as words; a task's score is one row whichever kind of
    run scored it; a blank setting equals an absent one."""
    w5, dense = runs["wanda50"], runs["dense"]
    perplexity = tables.load_metrics(store, "perplexity")
    assert compare.dense_baselines(perplexity, [w5]) == [dense]
    assert compare.dense_baselines(perplexity, [w5, dense]) == []  # already picked
    published_wanda = int(perplexity[(perplexity["origin"] == "published")
                                     & (perplexity["method"] == "wanda")]["run_id"].iloc[0])
    added = compare.dense_baselines(perplexity, [published_wanda])
    assert len(added) == 1 and added[0] < 0  # the same source's dense row
    at = run_page("pages/compare.py")
    at.multiselect[0].set_value([w5, published_wanda]).run()
    clean(at)
    results = at.dataframe[0].value
    assert any(c.startswith(f"#{dense} ") for c in results.columns)  # the baseline, added
    assert not any("#-" in c or " -" in c for c in results.columns)
    text = results.astype(str).to_string() + " ".join(at.multiselect[0].options)
    assert not re.search(r"#-\d|run -\d", text)
    assert compare.row_name("timing", "-", "prune_seconds") == "Time · pruning (s)"
    assert compare.row_name("memory", "-", "peak_mb") == "Memory · peak memory (MB)"
    metrics = tables.prepare(pd.DataFrame([
        {"run_id": 1, "origin": "own", "source": None, "model": "m", "method": "wanda",
         "sparsity": 0.5, "pattern": "unstructured", "spec": "{}", "run_kind": "prune",
         "run_status": "done", "kind": "zero_shot", "dataset": "sb_everyday", "metric": "acc",
         "value": 0.6, "stderr": None, "status": "ok", "note": None},
        {"run_id": 2, "origin": "own", "source": None, "model": "m", "method": "coreinfer",
         "sparsity": 0.4, "pattern": "unstructured", "spec": "{}", "run_kind": "activation",
         "run_status": "done", "kind": "task", "dataset": "sb_everyday", "metric": "acc",
         "value": 0.55, "stderr": None, "status": "ok", "note": None}]))
    table = compare.compare_table(metrics, [1, 2]).display()
    assert table["Metric"].tolist() == ["Zero-shot · sb_everyday (Accuracy)"]
    assert table["Δ #2 vs #1"].tolist() == ["-5.00 pts (worse)"]
    specs = pd.DataFrame([
        {"id": 1, "origin": "own", "source": None, "model": "m", "method": "wanda",
         "sparsity": 0.5, "pattern": "unstructured", "spec": '{"name": "", "seed": 0}'},
        {"id": 2, "origin": "own", "source": None, "model": "m", "method": "wanda",
         "sparsity": 0.5, "pattern": "unstructured", "spec": '{"seed": 0}'}])
    settings = compare.spec_table(specs, [1, 2]).display().set_index("Setting")
    assert settings.loc["name", "Differs"] == "" and settings.loc["name", "#1"] == "—"


COLLAPSED_PPL = {"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                 "value": 6960449.0, "status": "collapsed",
                 "note": "perplexity 6,960,449 is at or above the vocabulary size (49,152): "
                         "worse than uniform guessing"}


def test_a_collapsed_run_in_the_report_and_compare(store: Store, runs: dict[str, int]) -> None:
    """Issue 15: a 95% run above the vocabulary size read '+34,802,145%' and 'worse'."""
    mag95 = own_run(store, "magnitude", "0.95", [COLLAPSED_PPL])
    wanda95 = own_run(store, "wanda", "0.95", [ppl(900.0)])
    text = report.build(*frames(store), MODEL, tables.OWN_GROUP).markdown()
    assert "| Magnitude 95% | collapsed | collapsed | perplexity 6,960,449 is at or above" in text
    assert ("- **Magnitude 95%** collapsed on WikiText-2 (worse than uniform guessing); Dense "
            "has 20.00.") in text
    assert ("- **Wanda 95%** has perplexity 900.00 on WikiText-2 while Magnitude 95% collapsed "
            "(worse than uniform guessing), so no relative change is defined.") in text
    assert "6960449" not in text and "34802" not in text
    table = compare.compare_table(tables.prepare(queries.metric_rows(store)),
                                  [runs["dense"], mag95, wanda95])
    shown = table.display().set_index("Metric")
    column = next(c for c in shown.columns if c.startswith(f"#{mag95} "))
    assert shown.loc["Perplexity · WT2", column] == "collapsed"
    assert shown.loc["Perplexity · WT2", f"Δ #{mag95} vs #{runs['dense']}"] == ""
    assert math.isnan(table.frame.set_index("Metric").loc["Perplexity · WT2", column])


# -- pages -----------------------------------------------------------------------------------------
def run_page(script: str) -> AppTest:
    return AppTest.from_file(str(ROOT / script), default_timeout=120).run()


def clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", ["pages/report.py", "pages/compare.py"])
def test_new_pages_on_the_published_figures(store: Store, page: str) -> None:
    at = run_page(page)
    clean(at)
    if page == "pages/compare.py":  # it opens asking which runs
        assert any("Pick the runs to compare" in i.value for i in at.info)
        picker = at.multiselect[0]
        picker.set_value([o for o in picker.options if "Wanda 50%" in o][:2]).run()
        clean(at)
    assert at.dataframe and at.get("plotly_chart")
    for frame in at.dataframe:
        assert not frame.value.astype(str).apply(lambda c: c.str.lower().eq("nan")).any().any()
    labels = [b.label for b in at.download_button]
    assert labels.count("LaTeX") == len(at.dataframe)


def open_section(at: AppTest, section: str) -> AppTest:
    """Switch the Report page to one of its section tabs (as a click on it does)."""
    at.session_state["section"] = section
    return at.run()


def test_report_page_walks_every_published_subject(store: Store) -> None:
    at = run_page("pages/report.py")
    for option in at.selectbox[0].options:
        at.selectbox[0].set_value(option).run()
        clean(at)
        sections = [tab.label for tab in at.tabs]
        assert sections and set(sections) <= set(report.SECTIONS), option
        for section in sections:  # every tab shown has something to show
            open_section(at, section)
            clean(at)
            assert at.dataframe or any(m.value.startswith("- ") for m in at.markdown), (
                option, section)


def test_report_page_download_is_the_built_report(store: Store, runs: dict[str, int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The download is written when clicked (a deferred file) and is the built report."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    deferred: dict[str, object] = {}
    original = MediaFileManager.add_deferred

    def record(self, data_callable, mimetype, coordinates, file_name=None, **kw):  # noqa: ANN001, ANN202
        file_id = original(self, data_callable, mimetype, coordinates, file_name, **kw)
        deferred[file_id] = data_callable
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    at = run_page("pages/report.py")
    clean(at)
    assert at.selectbox[0].value == report.subject_label(MODEL, tables.OWN_GROUP)
    button = at.download_button[0]
    assert button.label.startswith("Download the report")
    assert deferred[button.proto.deferred_file_id]() == golden(store, runs)
    sections = [tab.label for tab in at.tabs]
    assert sections == list(report.SECTIONS)
    shown = {}
    for section in sections:  # one section at a time: each tab draws its own tables only
        open_section(at, section)
        clean(at)
        shown[section] = (len(at.dataframe), len(at.get("plotly_chart")))
    assert sum(frames for frames, _ in shown.values()) == 5
    assert sum(charts for _, charts in shown.values()) >= 4
    assert shown["Perplexity"] == (1, 1) and shown["Zero-shot"] == (1, 2)
    assert shown["Key findings"][0] == 0


def test_report_page_section_links_open_that_section(store: Store, runs: dict[str, int]
                                                     ) -> None:
    """``?section=`` opens one section (a shareable link); the others are not drawn."""
    at = AppTest.from_file(str(ROOT / "pages/report.py"), default_timeout=120)
    at.query_params["section"] = "Per-task"
    at.run()
    clean(at)
    headers = [h.value for h in at.subheader]
    assert "Per-Task Zero-Shot Breakdown" in headers
    assert not any(h.startswith("Perplexity Results") for h in headers)
    assert at.get("plotly_chart")  # the per-task chart of the first sparsity


@pytest.mark.parametrize("page", ["pages/report.py", "pages/compare.py"])
def test_new_pages_on_an_empty_store(empty: Store, page: str) -> None:
    at = run_page(page)
    assert not at.exception and not at.error
    assert at.info and "No " in at.info[0].value
    assert not at.dataframe


@pytest.mark.parametrize("page", ["pages/report.py", "pages/compare.py"])
def test_new_pages_report_a_corrupt_file(db: Path, page: str) -> None:
    db.write_bytes(bytes(range(256)) * 64)
    at = run_page(page)
    assert not at.exception
    assert at.error and "not a readable DuckDB file" in at.error[0].value


def test_layers_page_shows_owl_targets_and_findings(store: Store) -> None:
    stats = block_rows([0.45, 0.50, 0.55])
    stats += [{"block": b, "layer": "block", "stat": "owl_target", "value": v}
              for b, v in enumerate([0.45, 0.50, 0.55])]
    run_id = own_run(store, "wanda", "0.5", [], stats)
    at = run_page("pages/layers.py")
    clean(at)
    assert str(run_id) in at.selectbox[0].value
    text = "\n".join(m.value for m in at.markdown)
    assert "OWL block targets range from 45.00% (block 0) to 55.00% (block 2)" in text
    assert "Sparsity rises from the early blocks" in text and "adapts" not in text
    figure = at.get("plotly_chart")[0].proto.spec
    assert "OWL target" in figure and f"run {run_id}" in figure


def test_sweep_charts_draw_every_cell() -> None:
    from core.present import charts

    cells = pd.DataFrame({"alpha": [0.1, 0.1, 1.0, 1.0], "beta": [1, 5, 1, 5],
                          "run": [1, 2, 3, None], "status": ["done", "diverged", "done", "queued"],
                          "ppl": [18.0, math.nan, 17.5, math.nan]})
    scatter = charts.sweep_scatter(cells, "alpha")
    assert [len(t.x) for t in scatter.data] == [2, 2]
    assert list(scatter.data[1].text) == ["diverged", "queued"]
    assert scatter.data[1].yaxis == "y2" and set(scatter.data[1].y) == {charts.EDGE}
    assert scatter.layout.yaxis2.range == (0, 1)  # a strip at the top, not a perplexity
    assert scatter.layout.xaxis.type != "log"  # 0.1 to 1: one decade
    wide = cells.assign(alpha=[0.01, 0.1, 10.0, 100.0])
    assert charts.sweep_scatter(wide, "alpha").layout.xaxis.type == "log"
    assert "run 1" in scatter.data[0].hovertext[0] and "alpha=0.1, beta=1" in \
        scatter.data[0].hovertext[0]
    parallel = charts.sweep_parallel_chart(cells, ["alpha", "beta"])
    dims = parallel.data[0].dimensions
    assert [d.label for d in dims] == ["alpha", "beta", "perplexity"]
    assert list(dims[2].values) == [18.0, 17.5]
    assert "2 cells without a finite perplexity" in parallel.layout.title.text
    spread = charts.sweep_parallel_chart(wide.assign(ppl=[18.0, 17.0, 17.5, 19.0]),
                                         ["alpha", "beta"]).data[0].dimensions[0]
    assert spread.label == "alpha (log scale)" and list(spread.values) == [-2, -1, 1, 2]
    assert list(spread.ticktext) == ["0.01", "0.1", "1", "10", "100"]


def test_report_findings_and_tables_carry_the_intervals(store: Store) -> None:
    """With stored windows and standard errors, the report's Δ and retention columns have their
    intervals, and a perplexity change inside its paired interval is within noise."""
    import numpy as np

    rng = np.random.default_rng(7)
    hard = rng.normal(3.0, 0.4, 16)
    wobble = rng.normal(0, 0.03, 16)
    dense_nlls = hard
    near_nlls = hard + 0.003 + wobble - wobble.mean()  # +0.3% on average, the windows vary
    ids = {}
    for method, sparsity, nlls, acc in (("dense", "0", dense_nlls, 0.70),
                                        ("wanda", "0.5", near_nlls, 0.69),
                                        ("magnitude", "0.5", hard + 0.3, 0.50)):
        ids[method] = own_run(store, method, sparsity, [
            ppl(math.exp(float(np.mean(nlls)))),
            *({**zs(t, acc), "stderr": 0.02} for t in ("piqa", "boolq"))])
        store.add_window_nlls(ids[method], [{"dataset": "wikitext2", "nlls": list(nlls)}])
    built = report.build(*frames(store), MODEL, tables.OWN_GROUP)
    text = built.markdown()
    assert "Δ 95% interval" in text and "Retention 95% interval" in text
    lines = [line for line in text.splitlines()
             if line.startswith("- **Wanda 50%** has perplexity")]
    against_dense = next(line for line in lines if "than Dense" in line)
    assert "paired over the same windows): within noise" in against_dense
    magnitude = next(line for line in text.splitlines()
                     if line.startswith("- **Magnitude 50%** has perplexity") and "Dense" in line)
    assert magnitude.endswith(": worse.")


def _variant_run(store: Store, method: str, seed: int, value: float, **fields: object) -> int:
    spec = PruneSpec(method=method, sparsity="0" if method == "dense" else "0.5",
                     zero_shot_tasks=TASKS, seed=seed, **fields)
    run_id = create_run(store, spec, status="done")
    store.add_metrics(run_id, [ppl(value), *(zs(t, 0.6) for t in TASKS)])
    return run_id


def test_report_of_many_runs_shows_the_newest_variants_and_their_baselines(store: Store
                                                                           ) -> None:
    """14 Wanda variants (calibration seeds), a repeat of the newest, and two dense runs
    (one with other windows, never a baseline): the report shows the latest run of the 12
    newest variants, the one dense run they are compared with, and says what it left out;
    the Perplexity page's table still lists every run."""
    _variant_run(store, "dense", 0, 20.0)
    _variant_run(store, "dense", 0, 19.0, max_windows=2)  # other windows: no baseline here
    for seed in range(14):
        _variant_run(store, "wanda", seed, 30.0 + seed)
    _variant_run(store, "wanda", 13, 50.0)  # the newest variant again: its latest run
    rows = [tables.load_metrics(store, k) for k in ("perplexity", "zero_shot")]
    built = report.build(*rows, pd.DataFrame(), MODEL, tables.OWN_GROUP)
    shown = [b for b in built.blocks if b.name == "report-perplexity-wikitext2"][0].table.frame
    wanda = shown[shown["Method"].str.startswith("Wanda")]
    assert len(wanda) == report.MAX_VARIANTS
    assert not any("seed 0," in m or "seed 1," in m for m in wanda["Method"])
    assert shown.loc[shown["Method"].str.contains("seed 13"), "PPL"].tolist() == [50.0]
    assert shown.loc[shown["Method"].str.startswith("Dense"), "PPL"].tolist() == [20.0]
    intro = built.blocks[1].text
    assert "latest run of the 12 newest methods and variants" in intro
    assert "3 other own runs are not" in intro  # seeds 0 and 1, and the older seed-13 run
    every = tables.perplexity_table(rows[0][rows[0]["origin"] == "own"]).frame
    assert len(every[every["Method"].str.startswith("Wanda")]) == 15
