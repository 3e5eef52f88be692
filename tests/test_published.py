"""The published figures hold every number of the four seed reports.

Each seed file is parsed here on its own (nothing is imported from the script that wrote the CSV
files, and no number is typed in): every figure the seed prints must be found in the store
built from ``core/store/published/*.csv``, at the place (model, method, sparsity, dataset, ...)
the seed gives it.  Tokens that are not figures (table and section numbers, "Magnitude 30%"
labels, the "100" samples, the ``top_k`` of 100 in the parameter lists, ordinals such as "6th")
are named below.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core.present import tables
from core.store import db as store_db
from core.store import published, queries
from core.store.db import Store
from tests.seed_files import COPY, SHARED, seed_file

REPO = Path(__file__).resolve().parents[1]
SEED_PREFIXES = ("000", "002", "003", "004")
TOL = 1e-6
NUM = r"-?\d+(?:\.\d+)?"


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def seeds() -> dict[str, Path]:
    return {prefix: seed_file(prefix) for prefix in SEED_PREFIXES}


def test_seed_copies_equal_the_shared_seeds() -> None:
    """tests/seeds/ is a verbatim copy of the shared seed reports (where those are present)."""
    if not SHARED.is_dir():
        pytest.skip(f"no shared seed folder at {SHARED} to compare the copies with")
    for prefix in SEED_PREFIXES:
        shared = sorted(SHARED.glob(f"{prefix}_*.txt"))[0]
        assert (COPY / shared.name).read_bytes() == shared.read_bytes(), shared.name


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("published") / "t.duckdb").init()
    published.sync(store)
    return store


# ----------------------------------------------------------------------------------- helpers
def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= TOL


def _records(frame: pd.DataFrame, name: str) -> list[dict[str, Any]]:
    """The rows of ``frame`` whose run came from the seed file ``name`` (the run spec's ref)."""
    out = []
    for rec in frame.to_dict("records"):
        spec = json.loads(rec["spec"])
        if not str(spec.get("ref", "")).endswith(name):
            continue
        rec["spec"] = spec
        for key, value in rec.items():  # SQL NULL comes back from pandas as NaN
            if isinstance(value, float) and math.isnan(value):
                rec[key] = None
        out.append(rec)
    return out


def metric_rows(store: Store, seed: Path) -> list[dict[str, Any]]:
    return _records(queries.metric_rows(store), seed.name)


def layer_rows(store: Store, seed: Path) -> list[dict[str, Any]]:
    sql = ("SELECT l.*, r.spec, r.model, r.method, r.sparsity FROM layer_stats l "
           "JOIN runs r ON r.id = l.run_id")
    return _records(store.frame(sql), seed.name)


def trial_rows(store: Store, seed: Path) -> list[dict[str, Any]]:
    sql = ("SELECT t.*, r.spec, r.model, r.method, r.pattern FROM search_trials t "
           "JOIN runs r ON r.id = t.run_id ORDER BY t.run_id, t.trial")
    return _records(store.frame(sql), seed.name)


def printed(rec: dict[str, Any]) -> float | None:
    """The number a stored row says the seed printed (its raw text), checked against its value.

    A value is the printed number itself or, for a percentage stored as a fraction, 1/100 of it.
    """
    if rec["value"] is None:
        return None
    match = re.search(NUM, rec["raw"] or "")
    assert match, f"row {rec} has a value but no printed text"
    shown = float(match.group())
    assert _close(rec["value"], shown) or _close(rec["value"] * 100, shown), (
        f"stored value {rec['value']} disagrees with the printed text {rec['raw']!r}")
    return shown


def assert_contains(pool: list[float | None], wanted: list[float], what: str) -> None:
    """Every wanted number is in the pool, as many times as it is wanted."""
    have = Counter(round(x, 6) for x in pool if x is not None)
    need = Counter(round(x, 6) for x in wanted)
    missing = {k: n - have[k] for k, n in need.items() if have[k] < n}
    assert not missing, f"{what}: numbers printed in the seed but not stored: {missing}"


def matches(rec: dict[str, Any], crit: dict[str, Any]) -> bool:
    for key, want in crit.items():
        got = rec["spec"].get(key[5:]) if key.startswith("spec.") else rec.get(key)
        if isinstance(want, float) or key in ("sparsity", "spec.goal", "spec.alpha", "spec.beta"):
            if not _close(_num(got) if got is not None else None, want):
                return False
        elif got != want:
            return False
    return True


def one(rows: list[dict[str, Any]], **crit: Any) -> dict[str, Any]:
    found = [r for r in rows if matches(r, crit)]
    assert len(found) == 1, f"expected one stored row for {crit}, found {len(found)}"
    return found[0]


def some(rows: list[dict[str, Any]], number: float, **crit: Any) -> None:
    found = [r for r in rows if matches(r, crit) and _close(printed(r), number)]
    assert found, f"no stored row {crit} holds the printed {number}"


def md_cells(line: str) -> list[str] | None:
    """The cells of a markdown table body row; None for separators and non-table lines."""
    text = line.strip()
    if not text.startswith("|"):
        return None
    cells = [c.strip() for c in text.strip("|").split("|")]
    if all(re.fullmatch(r":?-{3,}:?", c) for c in cells if c):
        return None
    return cells


# ---------------------------------------------------------------------------------- seed 000
def _run_000(label: str) -> tuple[str, float]:
    """'Dense (Baseline)' -> dense at 0; 'Magnitude 30%' -> magnitude at 0.3 (a label, not a
    figure)."""
    if label.startswith("Dense"):
        return "dense", 0.0
    name, pct = re.fullmatch(r"(\w+) (\d+)%", label).groups()
    return name.lower(), int(pct) / 100


def test_seed_000_every_number(store: Store, seeds: dict[str, Path]) -> None:
    seed = seeds["000"]
    rows = metric_rows(store, seed)
    assert rows, "no stored rows for seed 000"
    wanted: list[float] = []
    nan_printed = 0
    section = None
    subsection = None
    header: list[str] | None = None
    cell_re = re.compile(r"([+-]?)(\d+(?:\.\d+)?|nan)(%?)")
    for line in seed.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
            continue
        if line.startswith("### "):
            # "### 30% Sparsity": the sparsity of the block, not a figure
            subsection = int(re.fullmatch(r"### (\d+)% Sparsity", line).group(1)) / 100
            header = None
            continue
        cells = md_cells(line)
        if cells is not None:
            if header is None:
                header = cells
                continue
            label, values = cells[0], cells[1:]
            for column, cell in zip(header[1:], values, strict=True):
                if cell == "-":  # the dense row's change from itself: not a figure
                    continue
                sign, number, pct = cell_re.fullmatch(cell).groups()
                if number == "nan":
                    nan_printed += 1
                    continue
                value = float(sign + number)
                wanted.append(value)
                if section.startswith("Perplexity"):
                    method, sparsity = _run_000(label)
                    kind = "perplexity" if column == "PPL" else "perplexity_summary"
                    some(rows, value, method=method, sparsity=sparsity, kind=kind,
                         dataset="wikitext2")
                elif section.startswith("Zero-Shot"):
                    method, sparsity = _run_000(label)
                    metric = {"Accuracy": "acc", "Retention": "retention"}[column]
                    some(rows, value, method=method, sparsity=sparsity,
                         kind="zero_shot_summary", dataset="average", metric=metric)
                else:  # per-task tables: rows are tasks, columns methods
                    method = column.lower()
                    sparsity = 0.0 if method == "dense" else subsection
                    some(rows, value, method=method, sparsity=sparsity, kind="zero_shot",
                         dataset=label, metric="acc")
            continue
        found = re.search(r"improves by (\S+?)(%| percentage points)", line)
        if found:
            if found.group(1) == "nan":
                nan_printed += 1
                continue
            value = float(found.group(1))
            wanted.append(value)
            kind = "perplexity_summary" if found.group(2) == "%" else "zero_shot_summary"
            some(rows, value, method="wanda", sparsity=subsection, kind=kind)
            continue
        # other lines with a digit: the title (model name) and "*Average across 5 tasks*"
        assert (not re.search(r"\d", line) or line.startswith("# ")
                or line.startswith("*Average across 5 tasks")), (
            f"unhandled seed-000 line with a number: {line!r}")
    assert len(wanted) >= 70, f"parsed only {len(wanted)} numbers from seed 000"
    assert_contains([printed(r) for r in rows], wanted, "seed 000")
    diverged = [r for r in rows if r["value"] is None and "nan" in (r["raw"] or "")]
    assert len(diverged) == nan_printed == 3
    assert all(r["status"] == "diverged" for r in diverged)


def test_seed_000_magnitude_70_perplexity_is_nan(store: Store, seeds: dict[str, Path]) -> None:
    frame = store.frame(
        "SELECT m.value IS NULL AS no_value, m.status, m.raw, m.note "
        "FROM metrics m JOIN runs r ON r.id = m.run_id "
        "WHERE r.origin = 'published' AND r.method = 'magnitude' AND abs(r.sparsity - 0.7) < 1e-9 "
        "AND m.kind = 'perplexity' AND json_extract_string(r.spec, '$.ref') LIKE ?",
        [f"%{seeds['000'].name}"])
    assert len(frame) == 1
    row = frame.iloc[0]
    assert bool(row["no_value"]) and row["status"] == "diverged" and row["raw"] == "nan"
    assert "nan" in row["note"]


# ---------------------------------------------------------------------------------- seed 002
def test_seed_002_every_number(store: Store, seeds: dict[str, Path]) -> None:
    seed = seeds["002"]
    rows = metric_rows(store, seed)
    layers = layer_rows(store, seed)
    assert rows and layers, "no stored rows for seed 002"
    text = seed.read_text(encoding="utf-8")
    # The figures are the decimal percentages of the bullet lines.  Not figures: the "0.5" and
    # "0.3" of the made-up Weight A / Weight B example, "~10-20%", "2x", "30-50%", "2:4 or 4:8".
    wanted = [float(x) for line in text.splitlines() if line.startswith("- ")
              for x in re.findall(r"(\d+\.\d+)%", line)]
    assert len(wanted) == 8
    pool = [printed(r) for r in rows]
    for rec in layers:
        assert rec["model"] == "Llama-3.1-8B" and rec["method"] == "wanda"
        assert _close(rec["sparsity"], 0.5)
        pool.append(printed(rec))
    assert_contains(pool, wanted, "seed 002")

    stats = {r["stat"]: r for r in layers}
    for stat, label in (("mean", "Mean sparsity"), ("std", "Std deviation"),
                        ("min", "Min sparsity"), ("max", "Max sparsity")):
        found = re.search(rf"\*\*{label}:\*\* ({NUM})%(?: \(Layer (\d+)\))?", text)
        assert _close(stats[stat]["value"] * 100, float(found.group(1)))
        if found.group(2) is not None:  # "(Layer 0)": where, not a figure
            assert int(stats[stat]["block"]) == int(found.group(2))
    # the text restates the standard deviation; it is the same stored number
    restated = re.search(rf"Standard deviation of ({NUM})%", text).group(1)
    assert _close(stats["std"]["value"] * 100, float(restated))

    for task in ("rte", "boolq"):
        drop = re.search(rf"\*\* {task} \(({NUM})% accuracy drop\)", text).group(1)
        some(rows, float(drop), kind="zero_shot_summary", dataset=task, metric="drop_pct")
    for sparsity in (50, 70):
        inc = re.search(rf"- {sparsity}% sparsity: ({NUM})% perplexity increase", text).group(1)
        some(rows, float(inc), kind="perplexity_summary", metric="change_pct", method="wanda",
             sparsity=sparsity / 100)


# ---------------------------------------------------------------------------------- seed 003
TASK_003 = {"truthfulqa": "truthfulqa_gen", "truthfulqagen": "truthfulqa_gen",
            "bertaqaen": "bertaqa_en", "squadv2": "squadv2", "commonsenseqa": "commonsense_qa",
            "triviaqa": "triviaqa", "wmt16deen": "wmt16-de-en"}
ORDINAL = r"(\d+)(?:st|nd|rd|th)"  # "6th configuration": a row index, checked as the trial

# Every bullet of seed 003 must be one of these; "100 samples" is a sample count, not a figure.
B_COMPARISON = re.compile(rf"- For the comparison with CoreInfer, sparsity = ({NUM}) and "
                          rf"token_sparsity = ({NUM}) has been used")
B_CI_ACTUAL = re.compile(rf"- CoreInfer actual sparsity for all of them was ({NUM})")
B_GOAL = re.compile(rf"- When determining these sparsity levels, the goal sparsity was set to "
                    rf"({NUM})(?: \(-10%\))?(?: for all datasets|:)")
B_SAMPLES = re.compile(r"- These params are evaluated on 100 samples from the corresponding "
                       r"dataset\.")
B_CI_SCORE = re.compile(rf"- CoreInfer got \*\*({NUM})\*\*")
B_BEST = re.compile(rf"- Then, I have picked the {ORDINAL} configuration \((?:sparsity = )?"
                    rf"(?P<paren>{NUM})\) and run it on the whole dataset and got a score of "
                    rf"\*\*(?P<score>{NUM})\*\* \((?P<pct>%{NUM}|{NUM}%)\)")
B_AVG = re.compile(rf"- (?:Then )?I used the AVG, which has actual sparsity = (?P<actual>{NUM}) "
                   rf"and run it on the whole dataset and got a score of"
                   rf"(?: \*\*(?P<score>{NUM})\*\* \((?P<pct>%{NUM}|{NUM}%)\))?")


def _parse_003(text: str) -> list[dict[str, Any]]:
    sections: list[dict[str, Any]] = []
    state: dict[str, Any] = {"model": None, "goal": None, "ci": None, "cmp": None}
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("## "):
            head = line[3:].lower()
            state["model"] = "OPT-6.7b" if head.startswith("opt-6.7b") else (
                "Llama-3.2-3B" if head.startswith("llama3") else None)
            assert state["model"], f"unknown model heading {line!r}"
            state["cmp"] = None
            cur = None
            continue
        if line.startswith("### "):
            key = re.sub(r"[^a-z0-9]", "", line[4:].lower())
            cur = {**state, "task": TASK_003[key], "rows": [], "best": None, "avg": None,
                   "ci_score": None, "line": line}
            sections.append(cur)
            continue
        cells = md_cells(line)
        if cells is not None:
            if cells[0] not in ("Params", "Levels"):  # header rows
                cur["rows"].append(cells[:3])
            continue
        if not stripped.startswith("- "):
            assert not re.search(r"\d", stripped) or stripped.startswith("#"), (
                f"unhandled seed-003 line with a number: {line!r}")
            continue
        sentence = stripped.rstrip()
        for pattern, key in ((B_COMPARISON, "cmp"), (B_CI_ACTUAL, "ci"), (B_GOAL, "goal")):
            found = pattern.fullmatch(sentence)
            if found:
                state[key] = tuple(map(float, found.groups())) if key == "cmp" else float(
                    found.group(1))
                if cur is not None:
                    cur[key] = state[key]
                break
        else:
            if B_SAMPLES.fullmatch(sentence):
                continue
            if (found := B_CI_SCORE.fullmatch(sentence)) is not None:
                cur["ci_score"] = float(found.group(1))
            elif (found := B_BEST.fullmatch(sentence)) is not None:
                cur["best"] = found
            elif (found := B_AVG.fullmatch(sentence)) is not None:
                cur["avg"] = found
            else:
                pytest.fail(f"unhandled seed-003 bullet: {line!r}")
    return sections


def _pct(text: str) -> float:
    return float(text.strip("%"))


def _check_pct(mine: list[dict[str, Any]], where: str, ci_score: float, score: float,
               pct_text: str, crit: dict[str, Any]) -> None:
    """The printed "% of CoreInfer" is stored; one that is not its own division is noted."""
    rec = one(mine, kind="search_summary", metric="pct_of_coreinfer", **crit)
    assert _close(rec["value"], _pct(pct_text)), f"{where} {crit}: percentage"
    division = score / ci_score * 100
    decimals = len(pct_text.strip("%").partition(".")[2])
    if abs(round(division, decimals) - _pct(pct_text)) > TOL:
        assert "does not match" in (rec["note"] or ""), (
            f"{where} {crit}: {pct_text} is not {division:.3f}%; the row must say so")


def test_seed_003_every_number(store: Store, seeds: dict[str, Path]) -> None:
    seed = seeds["003"]
    rows = metric_rows(store, seed)
    trials = trial_rows(store, seed)
    assert rows and trials, "no stored rows for seed 003"
    sections = _parse_003(seed.read_text(encoding="utf-8"))
    assert len(sections) == 16
    used_trials = 0
    for sec in sections:
        where = f"{sec['model']} {sec['task']} goal {sec['goal']}"
        model, task, goal = sec["model"], sec["task"], sec["goal"]

        # the search table: one stored trial per printed row, in order
        stored = [t for t in trials if t["spec"]["model"] == model
                  and t["spec"]["task"] == task and _close(t["spec"]["goal"], goal)]
        assert len(stored) == len(sec["rows"]) > 0, f"{where}: trial rows"
        assert len({t["run_id"] for t in stored}) == 1, f"{where}: one search run"
        used_trials += len(stored)
        for index, (first, actual, value) in enumerate(sec["rows"], start=1):
            trial = stored[index - 1]
            assert int(trial["trial"]) == index
            if first.startswith("["):
                # [sum_weight, count_weight, threshold, top_k]; the 100 is the top_k
                assert json.loads(trial["params"]) == json.loads(first), f"{where} row {index}"
            else:
                assert trial["label"] == first and trial["params"] is None
            assert _close(trial["actual_sparsity"], float(actual)), f"{where} row {index}"
            assert _close(trial["value"], float(value)), f"{where} row {index}"
            assert trial["raw"] == value

        mine = [r for r in rows if r["dataset"] == task and r["spec"]["model"] == model
                and _close(r["spec"].get("goal"), goal)]
        for rec in mine:
            assert rec["pattern"] == "activation" and rec["sparsity"] is None
            if sec["cmp"] is not None:
                assert _close(rec["spec"]["coreinfer_sparsity"], sec["cmp"][0]), where
                assert _close(rec["spec"]["token_sparsity"], sec["cmp"][1]), where

        # CoreInfer: score and the actual sparsity stated for the section
        ci = dict(method="coreinfer")
        assert sec["ci_score"] is not None, where
        assert _close(one(mine, kind="task", **ci)["value"], sec["ci_score"]), where
        assert _close(one(mine, kind="activation", **ci)["value"], sec["ci"]), where

        best = sec["best"]
        if best is not None:
            crit = {"method": "sparsity-levels", "spec.config": "best"}
            n = int(best.group(1))
            score = float(best.group("score"))
            rec = one(mine, kind="task", **crit)
            assert rec["spec"]["trial"] == n and _close(rec["value"], score), where
            paren = float(best.group("paren"))
            activation = one(mine, kind="activation", **crit)
            if "sparsity =" in best.group(0):
                assert _close(activation["value"], paren), where
                if not _close(float(sec["rows"][n - 1][1]), paren):  # the row has another one
                    assert activation["note"], f"{where}: the picked row's mismatch is not noted"
            else:  # "(4.72)": the picked row's 100-sample score
                assert _close(float(sec["rows"][n - 1][2]), paren), where
                assert _close(stored[n - 1]["value"], paren), where
            _check_pct(mine, where, sec["ci_score"], score, best.group("pct"), crit)
        avg = sec["avg"]
        assert avg is not None, where
        crit = {"method": "sparsity-levels", "spec.config": "AVG"}
        activation = one(mine, kind="activation", **crit)
        assert _close(activation["value"], float(avg.group("actual"))), where
        rec = one(mine, kind="task", **crit)
        if avg.group("score") is None:
            assert rec["value"] is None and rec["status"] == "missing", where
        else:
            assert _close(rec["value"], float(avg.group("score"))), where
            _check_pct(mine, where, sec["ci_score"], float(avg.group("score")),
                       avg.group("pct"), crit)
        # no stored row of this section is left unexplained by the seed
        assert len(mine) == 2 + (3 if best else 0) + (2 if avg.group("score") is None else 3)
    assert used_trials == len(trials)


def test_seed_003_missing_avg_score(store: Store, seeds: dict[str, Path]) -> None:
    rows = metric_rows(store, seeds["003"])
    rec = one(rows, model="OPT-6.7b", dataset="squadv2", kind="task", **{"spec.config": "AVG"})
    assert rec["value"] is None and rec["status"] == "missing"
    assert rec["note"] == "no value in seed"


# ---------------------------------------------------------------------------------- seed 004
DATASET_004 = {"WT2": "wikitext2", "PTB": "ptb", "C4": "c4"}
MODEL_004 = {"LlaMA-3 8b": "LLaMA-3-8B"}
METHODS_004 = ("magnitude", "wanda", "sparsegpt", "sparsellm")
DENSE_004 = re.compile(rf"(.+?) \(WikiText2 \(WT2\): ({NUM}); PTB: ({NUM}); C4: ({NUM})\)")


def _sparsity_004(label: str) -> tuple[str, float]:
    if ":" in label:
        n, m = map(int, label.split(":"))
        return label, n / m
    return "unstructured", int(label.rstrip("%")) / 100


def _cells_004(text: str) -> list[dict[str, Any]]:
    """Each printed number of seed 004 with where it belongs.

    Not figures: the table numbers and the captions ("Table 4: ... OPT-1.3b with 70% sparsity"),
    the header rows (sparsities, datasets, model names, the alpha/beta grid labels), and the
    stray "~" and "‘" the extraction left before some method names.
    """
    cells: list[dict[str, Any]] = []
    table = None
    model = None
    sparsities: list[str] = []
    datasets: list[str] = []
    models: list[str] = []
    betas: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        caption = re.match(r"Table (\d+):", line)
        if caption:
            table = int(caption.group(1))
            continue
        dense = DENSE_004.fullmatch(line)
        if dense:
            model = MODEL_004.get(dense.group(1), dense.group(1))
            for ds, token in zip(("wikitext2", "ptb", "c4"), dense.groups()[1:], strict=True):
                cells.append(dict(table=table, model=model, method="dense", pattern="dense",
                                  sparsity=0.0, kind="perplexity", dataset=ds, token=token))
            continue
        tokens = line.split()
        if tokens[0] == "Sparsity":
            sparsities = tokens[1:]
            continue
        if tokens[0] == "Dataset":
            datasets = [DATASET_004[t] for t in tokens[1:]]
            continue
        if tokens[0] == "alpB":  # rows are alpha, columns beta
            betas = tokens[1:]
            continue
        if all(t.startswith("OPT-") or t == "(2:4)" for t in tokens):
            models = [t for t in tokens if t.startswith("OPT-")]
            continue
        name = tokens[0].strip("‘~").lower()
        values = [t for t in tokens[1:] if t != "~"]
        if table == 4:
            assert len(values) == len(betas), line
            for beta, token in zip(betas, values, strict=True):
                cells.append(dict(table=4, model="OPT-1.3b", method="sparsellm",
                                  pattern="unstructured", sparsity=0.7, kind="perplexity",
                                  dataset="wikitext2", token=token,
                                  **{"spec.alpha": float(tokens[0]), "spec.beta": float(beta)}))
            continue
        assert name in METHODS_004, f"unhandled seed-004 line: {line!r}"
        for k, token in enumerate(values):
            if table == 3:
                assert len(values) == len(sparsities) == 3 * len(models), line
                pattern, sparsity = _sparsity_004(sparsities[k])
                cells.append(dict(table=3, model=models[k // 3], method=name, pattern=pattern,
                                  sparsity=sparsity, kind="timing", dataset="-", token=token))
            elif table == 5:
                assert len(values) == len(datasets) == 3 * len(models), line
                cells.append(dict(table=5, model=models[k // 3], method=name, pattern="2:4",
                                  sparsity=0.5, kind="perplexity", dataset=datasets[k],
                                  token=token))
            else:
                assert len(values) == len(datasets) == 3 * len(sparsities), line
                pattern, sparsity = _sparsity_004(sparsities[k // 3])
                cells.append(dict(table=table, model=model, method=name, pattern=pattern,
                                  sparsity=sparsity, kind="perplexity", dataset=datasets[k],
                                  token=token))
    return cells


def test_seed_004_every_number(store: Store, seeds: dict[str, Path]) -> None:
    seed = seeds["004"]
    rows = metric_rows(store, seed)
    assert rows, "no stored rows for seed 004"
    cells = _cells_004(seed.read_text(encoding="utf-8"))
    assert len(cells) == 225
    for cell in cells:
        crit = {k: v for k, v in cell.items() if k not in ("table", "token")}
        rec = one(rows, **crit)
        token = cell["token"]
        assert rec["raw"] == token, f"{crit}: raw {rec['raw']!r} is not the printed {token!r}"
        if token == "-":
            assert rec["value"] is None and rec["status"] == "missing", crit
            assert "no value in seed" in (rec["note"] or "")
            continue
        assert _close(rec["value"], float(token)), f"{crit}: {rec['value']} != {token}"
        if "." not in token:  # 11395 among two-decimal cells: stored as printed, and flagged
            assert "decimal point" in (rec["note"] or ""), crit
    wanted = [float(c["token"]) for c in cells if c["token"] != "-"]
    assert_contains([printed(r) for r in rows], wanted, "seed 004")
    assert len(rows) == len(cells)


# ------------------------------------------------------------------------- counts, no repeats
def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle) if any((v or "").strip() for v in r.values())]


def test_store_holds_exactly_the_csv_rows(store: Store, seeds: dict[str, Path]) -> None:
    figures = _csv(published.FIGURES)
    trials = _csv(published.TRIALS)
    runs = store.frame("SELECT id, spec FROM runs WHERE origin = 'published'")
    ref_of = {int(i): json.loads(s)["ref"] for i, s in zip(runs["id"], runs["spec"], strict=True)}
    counts = Counter()
    for table in ("metrics", "layer_stats"):
        for run_id in store.frame(f"SELECT run_id FROM {table}")["run_id"]:
            counts[ref_of[int(run_id)]] += 1
    trial_counts = Counter(ref_of[int(i)] for i in store.frame(
        "SELECT run_id FROM search_trials")["run_id"])
    assert counts == Counter(r["ref"] for r in figures)
    assert trial_counts == Counter(r["ref"] for r in trials)
    for seed in seeds.values():
        assert any(ref.endswith(seed.name) for ref in counts), f"{seed.name} not imported"

    def sparsity(text: str) -> float | None:
        return float(text) if text.strip() else None

    def run_params(text: str) -> str:
        """A row's params without the per-number keys (e.g. the block of a layer statistic)."""
        params = json.loads(text) if text.strip() else {}
        return json.dumps({k: v for k, v in params.items() if k not in published.ROW_KEYS},
                          sort_keys=True)

    groups = {("fig", r["source"], r["ref"], r["table"], r["model"], r["method"], r["pattern"],
               sparsity(r["sparsity"]), run_params(r["params"])) for r in figures}
    groups |= {("search", r["source"], r["ref"], r["table"], r["model"], r["task"],
                float(r["goal"])) for r in trials}
    assert len(runs) == len(groups), "the store's published runs are not the CSV's run groups"
    hashes = store.frame("SELECT spec_hash FROM runs WHERE origin = 'published'")["spec_hash"]
    assert hashes.is_unique, "two published runs have the same spec"


def test_seed_003_trials_carry_the_sample_count_the_seed_states(store: Store,
                                                                seeds: dict[str, Path]) -> None:
    stated = re.findall(r"evaluated on (\d+) samples", seeds["003"].read_text())
    assert stated and len(set(stated)) == 1
    counts = store.frame("SELECT DISTINCT t.n_samples FROM search_trials t JOIN runs r "
                         "ON r.id = t.run_id WHERE r.origin = 'published'")["n_samples"]
    assert counts.tolist() == [int(stated[0])]


# ------------------------------------------------------------- explicit import, stable ids
def _published_ids(store: Store) -> dict[int, dict[str, Any]]:
    frame = store.frame("SELECT id, spec FROM runs WHERE origin = 'published'")
    return {int(i): json.loads(s) for i, s in zip(frame["id"], frame["spec"], strict=True)}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=published.FIGURE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _key(row: dict[str, str]) -> tuple:
    params = json.loads(row["params"]) if row["params"].strip() else {}
    return published.figure_key(row, {k: v for k, v in params.items()
                                      if k not in published.ROW_KEYS})


def test_init_only_creates_the_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.duckdb").init()
    assert store.schema_version() == store_db.SCHEMA_VERSION
    assert store.runs().empty
    assert store.get_meta("published_fingerprint") is None


def test_sync_imports_once_and_only_when_changed(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.duckdb").init()
    assert published.sync(store) is True
    ids = _published_ids(store)
    assert len(ids) == len(published.collect()) > 0
    assert published.sync(store) is False  # nothing changed: not imported again
    assert _published_ids(store) == ids


def test_published_ids_are_derived_and_never_an_own_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.duckdb").init()
    before = store.create_run(kind="prune", model="m", method="wanda", spec={"n": 1})
    published.sync(store)
    after = store.create_run(kind="prune", model="m", method="wanda", spec={"n": 2})
    ids = set(_published_ids(store))
    assert ids == set(published.collect())
    assert all(-published.ID_SPAN <= i <= -1 for i in ids)
    assert {before, after} == {1, 2} and not ids & {before, after}
    # the same files give the same ids in any other store
    other = Store(tmp_path / "other.duckdb").init()
    published.sync(other)
    assert set(_published_ids(other)) == ids


def test_reimport_keeps_the_ids_of_unchanged_runs(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    figures = tmp_path / "figures.csv"
    rows = _csv(published.FIGURES)
    _write_csv(figures, rows)
    monkeypatch.setattr(published, "FIGURES", figures)
    store = Store(tmp_path / "r.duckdb").init()
    own = store.create_run(kind="prune", model="m", method="wanda", spec={}, status="done")
    store.add_metrics(own, [{"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                             "value": 9.0}])
    assert published.sync(store)
    first = _published_ids(store)
    sizes = Counter(_key(r) for r in rows)
    single = [i for i, r in enumerate(rows) if sizes[_key(r)] == 1 and r["kind"] == "perplexity"]
    revalued, moved, dropped = single[0], single[1], single[2]
    old_value = rows[revalued]["value"]
    changed = [dict(r) for r in rows]
    changed[revalued].update(value="123.45", raw="123.45")  # a corrected number: same run
    changed[moved]["model"] = rows[moved]["model"] + "-moved"  # another run now
    added = {**rows[0], "table": "A table added later", "value": "1.5", "raw": "1.5"}
    keys = {name: _key(rows[i]) for name, i in
            (("revalued", revalued), ("moved", moved), ("dropped", dropped))}
    del changed[dropped]
    _write_csv(figures, [*changed, added])
    assert published.sync(store)
    second = _published_ids(store)

    ids = {name: published.run_id(key) for name, key in keys.items()}
    assert set(ids.values()) <= set(first)
    untouched = set(first) - {ids["moved"], ids["dropped"]}
    assert {i: first[i] for i in untouched} == {i: second[i] for i in untouched}
    assert ids["moved"] not in second and ids["dropped"] not in second
    new = set(second) - set(first)
    assert new == {published.run_id(_key(changed[moved - (moved > dropped)])),
                   published.run_id(_key(added))}
    assert second[published.run_id(_key(added))]["table"] == "A table added later"
    value = store.frame("SELECT value FROM metrics WHERE run_id = ?", [ids["revalued"]])
    assert value["value"].tolist() == [123.45] and old_value != "123.45"
    # every number written once, own run untouched
    counts = store.frame("SELECT (SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id "
                         "WHERE r.origin = 'published') + (SELECT count(*) FROM layer_stats)")
    assert counts.iloc[0, 0] == len(changed) + 1
    assert queries.metric_rows(store).query("origin == 'own'")["value"].tolist() == [9.0]
    assert int(store.runs().query("origin == 'own'")["id"].iloc[0]) == own


def test_runs_imported_with_sequence_ids_get_their_stable_ids(tmp_path: Path) -> None:
    """A file written before stable ids holds published runs numbered by the sequence."""
    store = Store(tmp_path / "old.duckdb").init()
    old = store.create_run(kind="published", model="m", method="wanda", origin="published",
                           spec={"x": 1}, status="done")
    store.add_metrics(old, [{"kind": "perplexity", "dataset": "d", "metric": "ppl", "value": 1}])
    own = store.create_run(kind="prune", model="m", method="wanda", spec={}, status="done")
    with store.transaction() as con:
        con.execute("INSERT INTO meta VALUES ('published_fingerprint', 'from importer 2')")
    assert published.sync(store)
    ids = set(_published_ids(store))
    assert old not in ids and ids == set(published.collect())
    assert store.frame("SELECT count(*) FROM metrics WHERE run_id = ?", [old]).iloc[0, 0] == 0
    assert store.runs().query("origin == 'own'")["id"].tolist() == [own]


def test_read_only_store_is_not_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    monkeypatch.setattr(store_db, "_writable", lambda _path: False)
    readonly = Store(store.path).init()
    assert published.sync(readonly) is False and readonly.runs().empty


def test_dashboard_store_imports_the_figures_once_per_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEBENCH_DB", str(tmp_path / "results.duckdb"))
    state: dict[str, Any] = {}
    store = tables.session_store(state)
    assert set(_published_ids(store)) == set(published.collect())
    calls: list[Store] = []
    monkeypatch.setattr(published, "sync", calls.append)
    assert tables.session_store(state) is store and not calls
