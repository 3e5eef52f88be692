"""Integration: the real SmolLM2-135M (offline GGUF -> safetensors cache).  Its pruned
perplexities are checked in ``tests/test_reference_exact.py``."""

from __future__ import annotations

import pytest

from core.engine import models

pytestmark = pytest.mark.slow


def test_smollm2_loads_from_cache_as_llama() -> None:
    model, tokenizer = models.load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(model.model.layers) == 30 and model.config.hidden_size == 576
    assert tokenizer("Hello world")["input_ids"]


def test_ria_with_reallocation_through_the_command_line(tmp_path, capsys) -> None:  # noqa: ANN001
    """About 23 s: two runs of the real 30-block model (RIA and its dense baseline), each in
    its own process.  RIA 2:4 with channel reallocation, run as a user runs it: every linear
    loses half its weights, both runs are stored done, and the pruned model is worse than
    dense but not collapsed."""
    import cli
    from core.store import queries
    from core.store.db import Store

    db = tmp_path / "ria.duckdb"
    code = cli.main(["--db", str(db), "prune", "--method", "ria", "--sparsity", "2:4",
                     "--param", "reallocation=true", "--samples", "4", "--seqlen", "128",
                     "--ppl-seqlen", "128", "--max-windows", "4", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    store = Store(db)
    runs = store.frame("SELECT id, method, status FROM runs WHERE origin = 'own' ORDER BY id")
    assert runs["method"].tolist() == ["ria", "dense"] and set(runs["status"]) == {"done"}
    sparsity = store.frame("SELECT value FROM layer_stats WHERE run_id = ? AND layer = 'model' "
                           "AND stat = 'overall'", [int(runs["id"][0])]).iloc[0, 0]
    assert sparsity == pytest.approx(0.5, abs=1e-6)  # a few kept weights are zero already
    ppl = queries.metric_rows(store, "perplexity").set_index("method")["value"]
    assert ppl["dense"] < ppl["ria"] < 10 * ppl["dense"]
