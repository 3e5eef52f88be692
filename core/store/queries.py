"""Read queries the pages use, in one place (the present layer formats what they return)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from core.store.db import Store

_RUN_COLUMNS = """r.id AS run_id, r.origin, r.source, r.kind AS run_kind, r.model, r.method,
                  r.sparsity, r.pattern, r.spec, r.status AS run_status"""


def layer_stat_rows(store: Store, run_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Layer statistics rows with their run's columns (of ``run_ids`` only, when given)."""
    where, params = "", []
    if run_ids is not None:
        if not run_ids:
            where = "WHERE false"
        else:
            where = f"WHERE l.run_id IN ({', '.join('?' for _ in run_ids)})"
            params = [int(i) for i in run_ids]
    return store.frame(
        f"""SELECT {_RUN_COLUMNS}, l.block, l.layer, l.stat, l.value, l.raw, l.note
            FROM layer_stats l JOIN runs r ON r.id = l.run_id {where}
            ORDER BY r.id, l.block, l.layer""", params)


def layer_stat_runs(store: Store) -> pd.DataFrame:
    """One row per run that has layer statistics: its run's columns and ``blocks``, the number
    of blocks with a measured block sparsity (from the summaries stored with the rows)."""
    return store.frame(
        f"""SELECT {_RUN_COLUMNS}, s.blocks
            FROM layer_summaries s JOIN runs r ON r.id = s.run_id ORDER BY r.id""")
