"""Store frames prepared for the tables: loading, the labels each row carries, filters and row
order (every label worked out once per distinct value)."""

from __future__ import annotations

import collections
import functools
import inspect
import json
import threading
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from core.present.labels import (
    ORIGIN_NAMES,
    OWN_GROUP,
    _dataset_key,
    _isna_safe,
    _method_rank,
    method_label,
    parse_spec,
    run_label,
    settings,
    sparsity_key,
    sparsity_label,
    zs_evaluation_label,
)
from core.store import queries
from core.store.db import SETTING_COLUMNS, Store, setting_value

T = TypeVar("T")


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``Store.metrics`` with the spec parsed and the labels every table uses added.

    Only finished runs are kept ('done'); 'group' is the source of a published row and
    ``OWN_GROUP`` for an own run: numbers are only compared within one group.  The labels are
    worked out once per distinct run columns (a run's rows share one parsed spec dict: read
    only), then repeated for the rows.
    """
    df = frame.copy(deep=False)
    if "run_status" in df:
        df = df[df["run_status"].isna() | (df["run_status"] == "done")]
    df = df.reset_index(drop=True).astype({c: object for c in df.columns
                                           if isinstance(df[c].dtype, pd.StringDtype)})
    codes, firsts = _run_rows(df, bool(frame.attrs.get(queries.PER_RUN)))
    raw = (df["spec"].to_numpy(dtype=object)[firsts].tolist() if "spec" in df
           else [None] * len(firsts))
    keys = [s if isinstance(s, str) or s is None else json.dumps(s, sort_keys=True, default=str)
            for s in raw]
    inputs = [keys, *(df[c].to_numpy(dtype=object)[firsts].tolist() if c in df
                      else [None] * len(firsts) for c in _LABEL_INPUTS)]
    if "origin" not in df:  # frames not read from the store: own rows
        inputs[1] = ["own"] * len(firsts)
    seen: dict[tuple, int] = {}
    distinct = np.fromiter((seen.setdefault(c, len(seen)) for c in zip(*inputs, strict=True)),
                           dtype=np.int64, count=len(firsts))[codes]
    labels = _run_labels(list(seen), "method" in df, "run_settings" in df)
    for name, values in labels.items():
        df[name] = pd.Series(_object_array(values)[distinct], index=df.index, dtype=object)
    if "method" in df:
        df["dense"] = ((df["pattern"] == "dense") | (df["method"] == "dense")).astype(bool)
    for key, column in SETTING_COLUMNS.items():  # frames not read from the store
        if column not in df:
            values = _object_array([setting_value(_spec_info(k)[0].get(key)) for k in keys])
            df[column] = pd.Series(values[codes], index=df.index, dtype=object)
    return df


def _run_rows(df: pd.DataFrame, per_run: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each row's run (a code) and the first row of each: by ``run_id`` for rows whose run
    columns are their run's (``queries.PER_RUN``: read from the store), else one run per row."""
    if not per_run or "run_id" not in df:
        return np.arange(len(df)), np.arange(len(df))
    codes, _ = pd.factorize(df["run_id"].to_numpy())
    return codes, np.unique(codes, return_index=True)[1]


#: The run columns the labels are worked out from (with the spec), in ``_run_labels``' order.
_LABEL_INPUTS = ("origin", "source", "method", "sparsity", "pattern", "variant", "run_settings")


def _run_labels(runs: list[tuple], has_method: bool, has_settings: bool
                ) -> dict[str, list[Any]]:
    """The labels of each distinct (spec, ``_LABEL_INPUTS``...) of ``prepare``."""
    names = ["spec", "group", "origin_label", "source_label", "settings", "table",
             "evaluation", *(["method_label", "sparsity_label", "run_label"] if has_method
                             else [])]
    rows = [_run_info(run, has_method, has_settings) for run in runs]
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


@functools.lru_cache(maxsize=200_000)
def _run_info(run: tuple, has_method: bool, has_settings: bool) -> tuple:
    """The labels of one distinct run (spec text and ``_LABEL_INPUTS``), once per process: a
    stored run's columns never change (the spec dict is shared, so read only)."""
    key, origin, source, method, sparsity, pattern, variant, own = run
    parsed, table, evaluation = _spec_info(key)
    published = origin == "published" and isinstance(source, str) and source
    stored = has_settings and isinstance(own, str)  # an own run's, written when it was stored
    info = (parsed, source if published else OWN_GROUP, ORIGIN_NAMES.get(origin, str(origin)),
            source if isinstance(source, str) and source else "",
            own if stored else _settings_text(key), table, evaluation)
    if not has_method:
        return info
    return (*info, method_label(method), sparsity_label(sparsity, pattern, method),
            run_label(method, sparsity, pattern, variant))


def object_columns(columns: dict[str, Any]) -> pd.DataFrame:
    """A table frame whose text columns stay plain Python objects: pandas 3 would convert each
    list or object array of strings to Arrow (30,000 rows: milliseconds a column), which the
    tables then read back cell by cell."""
    return pd.DataFrame({name: pd.Series(values, dtype=object, copy=False)
                         if isinstance(values, list) or (isinstance(values, np.ndarray)
                                                         and values.dtype == object)
                         else values for name, values in columns.items()})


def _object_array(values: list[Any]) -> np.ndarray:
    """``values`` as a 1-d object array (dicts and tuples in it stay whole values)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


@functools.lru_cache(maxsize=100_000)
def _spec_info(spec: str | None) -> tuple[dict[str, Any], str, str]:
    """A spec's parsed dict, published table and zero-shot evaluation label, once per spec
    text in this process (every load of a page and every page reads the same runs): the dict
    is shared, so read only."""
    parsed = parse_spec(spec)
    return parsed, parsed.get("table") or "", zs_evaluation_label(parsed)


@functools.lru_cache(maxsize=100_000)
def _settings_text(spec: str | None) -> str:
    """The settings text of a run stored without one (published figures, frames not read
    from the store), once per spec text: own runs store theirs, so a first render at 10,000
    runs formats none of them."""
    return settings(_spec_info(spec)[0])


def run_labels(rows: pd.DataFrame) -> list[str]:
    """Each row's run label (``run_label``): the prepared column, or worked out for a frame
    that was not prepared."""
    if "run_label" in rows:
        return list(rows["run_label"])
    variant = rows["variant"] if "variant" in rows else [None] * len(rows)
    return per_value(run_label, rows["method"], rows["sparsity"], rows["pattern"], variant)


def evaluation_labels(rows: pd.DataFrame) -> pd.Series:
    """Each row's zero-shot evaluation label (``zs_evaluation_label`` of its spec): the
    prepared column, or worked out for a frame that was not prepared."""
    if "evaluation" in rows:
        return rows["evaluation"]
    return pd.Series([zs_evaluation_label(s) for s in rows["spec"]], index=rows.index,
                     dtype=object)


F = TypeVar("F", bound=Callable[..., Any])


def frame_cache(maxsize: int = 16) -> Callable[[F], F]:
    """Remember a function of a frame (its first argument), other frames and hashable other
    arguments for the same frame objects: a report asks for the same per-task rows several
    times.  The result is shared (read only); the frames are held, so an id is never confused
    with a later frame's.  Safe across the server's session threads (the bookkeeping is
    locked, not the work)."""
    def decorate(function: F) -> F:
        kept: collections.OrderedDict[tuple, tuple[list[pd.DataFrame], Any]] = (
            collections.OrderedDict())
        lock = threading.Lock()
        signature = inspect.signature(function)

        @functools.wraps(function)
        def cached(frame: pd.DataFrame, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(frame, *args, **kwargs)
            bound.apply_defaults()
            values = list(bound.arguments.values())
            frames = [v for v in values if isinstance(v, pd.DataFrame)]
            key = tuple(("frame", id(v)) if isinstance(v, pd.DataFrame) else v for v in values)
            try:
                hash(key)
            except TypeError:  # an argument that cannot be hashed (a list): not remembered
                return function(frame, *args, **kwargs)
            with lock:
                hit = kept.get(key)
                if hit is not None and all(a is b for a, b in zip(hit[0], frames, strict=True)):
                    kept.move_to_end(key)
                    return hit[1]
            value = function(frame, *args, **kwargs)
            with lock:
                kept[key] = (frames, value)
                while len(kept) > maxsize:
                    kept.popitem(last=False)
            return value
        return cached  # type: ignore[return-value]
    return decorate


def per_value(compute: Callable[..., T], *columns: Iterable[Any]) -> list[T]:
    """``compute(*values)`` for each row of ``columns``, worked out once per distinct values."""
    lists = [c.tolist() if isinstance(c, pd.Series | pd.Index) else list(c) for c in columns]
    if len(lists) == 1:  # no tuples to build
        single = {v: compute(v) for v in dict.fromkeys(lists[0])}
        return [single[v] for v in lists[0]]
    keys = list(zip(*lists, strict=True))
    done = {k: compute(*k) for k in dict.fromkeys(keys)}
    return [done[k] for k in keys]


def session_store(state: MutableMapping[str, Any]) -> Store:
    """The store of this browser session, opened once per session and path: the schema created
    or migrated, then the published figures imported when they are new or changed (the explicit
    start-up step ``published.sync``; a cheap check when nothing changed).

    ``state`` is ``st.session_state``; raises ``StoreError`` when the file cannot be used.
    """
    from core import config
    from core.store import published
    from core.store.db import Store

    store = state.get("store")
    if store is None or store.path != config.db_path():
        store = Store().init()
        published.sync(store)
        state["store"] = store
    return store


def load_metrics(store: Store, kind: str, archived: bool = False, model: str | None = None,
                 origin: str | None = None) -> pd.DataFrame:
    """Prepared metric rows of one kind ('perplexity', 'zero_shot', 'task', 'activation' ...),
    of archived runs too when ``archived``, of ``model``'s runs and of ``origin``'s ('own',
    'published') only when given."""
    return prepare(queries.metric_rows(store, kind, archived=archived, model=model,
                                       origin=origin))


def load_search_trials(store: Store) -> pd.DataFrame:
    """Search trials with their run's model, source and spec (task, metric, goal)."""
    df = prepare(queries.search_trial_rows(store))
    df["task"] = [s.get("task", "") for s in df["spec"]]
    df["goal"] = [s.get("goal") for s in df["spec"]]
    return df


def run_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Number of runs by origin and source (own runs: by status), for the overview page."""
    if runs.empty:
        return pd.DataFrame(columns=["Origin", "Source", "Runs"])
    df = runs.assign(
        Origin=[ORIGIN_NAMES.get(o, o) for o in runs["origin"]],
        Source=[s if o == "published" and isinstance(s, str) and s else f"{OWN_GROUP} ({st})"
                for o, s, st in zip(runs["origin"], runs["source"], runs["status"], strict=True)])
    counts = df.groupby(["Origin", "Source"]).size().reset_index(name="Runs")
    return counts.sort_values(["Origin", "Source"], key=lambda c: c.str.lower()
                              ).reset_index(drop=True)


def choices(rows: pd.DataFrame, column: str) -> list[str]:
    """The distinct values of a column, sorted, for a filter widget."""
    if rows.empty or column not in rows:
        return []
    values = {str(v) for v in pd.unique(rows[column].to_numpy(dtype=object))
              if not _isna_safe(v) and str(v)}
    if column == "method":
        return sorted(values, key=lambda m: (_method_rank(m), m))
    if column == "dataset":
        return sorted(values, key=_dataset_key)
    return sorted(values, key=lambda v: (v != OWN_GROUP, v.lower()))


def sparsity_levels(rows: pd.DataFrame) -> list[str]:
    """The sparsity labels of the pruned rows, from least to most pruned ('30%', '2:4' ...)."""
    if rows.empty:
        return []
    pruned = rows[~rows["dense"].astype(bool)]
    keys = {label: sparsity_key(s, p) for label, s, p in
            zip(pruned["sparsity_label"], pruned["sparsity"], pruned["pattern"], strict=True)}
    return sorted(keys, key=keys.__getitem__)


def default_choice(rows: pd.DataFrame, column: str) -> str | None:
    """The value to preselect: the most frequent among own runs, else among all rows."""
    if rows.empty or column not in rows:
        return None
    own = rows[rows["origin"] == "own"] if "origin" in rows else rows.iloc[0:0]
    pool = own if not own.empty else rows
    return str(pool[column].astype(str).value_counts().index[0])


def filter_rows(rows: pd.DataFrame, *, models: Iterable[str] | None = None,
                methods: Iterable[str] | None = None, groups: Iterable[str] | None = None,
                origins: Iterable[str] | None = None,
                datasets: Iterable[str] | None = None) -> pd.DataFrame:
    """Keep the rows whose model, method, group (source), origin and dataset are selected.

    ``None`` means no filter on that column; an empty selection keeps nothing.  Dense rows are
    kept whenever their model is kept, so that every pruned row keeps its baseline.
    """
    keep = pd.Series(True, index=rows.index)
    for column, selected in (("model", models), ("group", groups), ("origin", origins),
                             ("dataset", datasets)):
        if selected is not None and column in rows:
            keep &= rows[column].isin(list(selected))
    if methods is not None and "method" in rows:
        wanted = rows["method"].isin(list(methods))
        if "dense" in rows:
            wanted |= rows["dense"].astype(bool)
        keep &= wanted
    return rows[keep]


def dedupe_published(rows: pd.DataFrame) -> pd.DataFrame:
    """Drop a published number printed again, identically, in another table of the same source
    (e.g. seed 000 repeats the dense scores in each per-task table); own runs are all kept."""
    if rows.empty:
        return rows
    keys = ["group", "model", "method", "pattern", "sparsity", "settings", "kind", "dataset",
            "metric", "value", "status"]
    published = rows[rows["origin"] == "published"]
    dupes = published[published[keys].astype(str).duplicated(keep="first")]
    return rows.drop(index=dupes.index) if not dupes.empty else rows


def latest_runs(rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per key: the most recent run (highest id)."""
    return rows.sort_values("run_id").drop_duplicates(list(keys), keep="last")


def _sort_rows(rows: pd.DataFrame, first: Sequence[str]) -> pd.DataFrame:
    """``rows`` by group (own runs first), the ``first`` columns, sparsity, method and run:
    each key ranked once per distinct value, then one stable ``np.lexsort``."""
    if rows.empty:
        return rows
    keys = [per_value(lambda g: (g != OWN_GROUP, g.lower()), rows["group"]),
            *(per_value(_sort_key(c), rows[c]) for c in first),
            per_value(sparsity_key, rows["sparsity"], rows["pattern"], rows["method"]),
            per_value(_method_rank, rows["method"])]
    ranks = [_ranks(k) for k in keys] + [rows["run_id"].to_numpy()]
    return rows.iloc[np.lexsort(ranks[::-1])]


def _sort_key(column: str) -> Callable[[Any], Any]:
    if column == "dataset":
        return _dataset_key
    if column == "model":
        return lambda m: m.lower()
    return lambda v: v


def _missing_last(key: Any) -> tuple:
    return (1, "") if key is None or (isinstance(key, float) and key != key) else (0, key)


def _ranks(keys: list[Any]) -> np.ndarray:
    """Each key's rank among the distinct keys (equal keys, equal ranks; missing ones last)."""
    order = {k: i for i, k in enumerate(sorted(set(keys), key=_missing_last))}
    return np.array([order[k] for k in keys], dtype=np.int64)


def load_layer_stats(store: Store, run_ids: list[int] | None = None) -> pd.DataFrame:
    """Layer statistics of finished runs (of ``run_ids`` only, when given) with their run's
    model, method, origin and spec."""
    return prepare(queries.layer_stat_rows(store, run_ids))


def load_layer_runs(store: Store, model: str | None = None) -> pd.DataFrame:
    """One row per finished run with layer statistics (``blocks``: how many blocks have a
    measured sparsity), for ``layer_runs`` and the filters without reading every layer row."""
    return prepare(queries.layer_stat_runs(store, model))
