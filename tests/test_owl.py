"""OWL: outlier ratios from a dense pass, the ratio -> per-block target mapping, and pruning
with per-block targets through the shared runner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.engine.prune import runner
from core.engine.prune.methods import get_method
from core.engine.prune.methods.base import Target
from core.engine.prune.owl import OWL, outlier_ratios, owl_targets, targets_from_ratios
from core.engine.prune.runner import prune_model

D = [0.012, 0.030, 0.004, 0.021, 0.030, 0.009, 0.017, 0.025]


def test_mapping_by_hand():
    # D min..max -> [0, 2 lambda] -> target - (mapped - mean(mapped))
    assert targets_from_ratios([0.0, 0.5, 1.0], 0.5, 0.08) == pytest.approx([0.58, 0.5, 0.42])
    assert targets_from_ratios([0.2, 0.1], 0.6, 0.05) == pytest.approx([0.55, 0.65])


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("lam", [0.02, 0.08, 0.2])
def test_targets_average_to_the_request_and_keep_the_spread(target, lam):
    got = targets_from_ratios(D, target, lam)
    assert len(got) == len(D)
    assert sum(got) / len(got) == pytest.approx(target, abs=1e-9)
    assert max(got) - min(got) <= 2 * lam + 1e-12
    if min(got) > 0.01 and max(got) < 0.99:  # nothing clipped: the full 2 lambda spread
        assert max(got) - min(got) == pytest.approx(2 * lam)


@pytest.mark.parametrize("target", [0.05, 0.5, 0.97])
def test_higher_outlier_ratio_means_lower_sparsity(target):
    got = targets_from_ratios(D, target, 0.08)
    order = sorted(range(len(D)), key=lambda i: D[i])
    for lower, higher in zip(order, order[1:], strict=False):
        if D[higher] > D[lower]:
            assert got[higher] <= got[lower] + 1e-12
    strict = targets_from_ratios(D, 0.5, 0.08)  # unclipped: strictly opposite to D
    assert strict[D.index(max(D))] < strict[D.index(min(D))]
    assert strict[D.index(0.021)] < strict[D.index(0.017)]


@pytest.mark.parametrize("target", [0.02, 0.05, 0.08])
def test_floor_and_rebalance(target):
    got = targets_from_ratios(D, target, 0.08)
    assert min(got) >= 0.01 - 1e-12
    assert min(got) == pytest.approx(0.01)  # the floor was needed here...
    assert sum(got) / len(got) == pytest.approx(target, abs=1e-6)  # ...and the mean still holds


def test_cap_below_one():
    got = targets_from_ratios(D, 0.95, 0.08)
    assert max(got) <= 0.99 + 1e-12 and max(got) < 1
    assert sum(got) / len(got) == pytest.approx(0.95, abs=1e-6)
    assert all(Target(t) for t in got)  # every entry is a valid target


def test_all_equal_ratios_give_uniform_targets():
    assert targets_from_ratios([0.02] * 5, 0.6, 0.08) == pytest.approx([0.6] * 5)
    assert targets_from_ratios([0.0], 0.5) == pytest.approx([0.5])
    assert targets_from_ratios(D, 0.0) == [0.0] * len(D)


def test_bad_inputs_refused():
    with pytest.raises(ValueError, match="at least one block"):
        targets_from_ratios([], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        targets_from_ratios(D, 1.0)
    with pytest.raises(ValueError, match="lambda"):
        targets_from_ratios(D, 0.5, -0.1)


def reference_ratios(model: nn.Module, arch, calibration: torch.Tensor, m: float) -> list[float]:
    """D per block, written from the definition: dense model, hooks on every linear."""
    sums: dict[nn.Module, torch.Tensor] = {}
    handles = []
    linears = [[mod for mod in block.modules() if isinstance(mod, nn.Linear)]
               for block in arch.blocks(model)]
    for mod in (mod for block in linears for mod in block):
        def hook(module, args, _out):  # noqa: ANN001
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[module] = sums.get(module, 0) + (x * x).sum(0)
        handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for row in calibration:
            model(input_ids=row.unsqueeze(0))
    for handle in handles:
        handle.remove()
    ratios = []
    for block in linears:
        scores = torch.cat([(mod.weight.double().abs() * sums[mod].sqrt()).flatten()
                            for mod in block])
        ratios.append(float((scores > m * scores.mean()).double().mean()))
    return ratios


@pytest.mark.parametrize("m", [2.0, 5.0])
def test_outlier_ratios_match_the_definition(archs, calibration, m):
    arch = archs["llama"]
    got = outlier_ratios(arch.build(), calibration, M=m)
    expected = reference_ratios(arch.build(), arch, calibration, m)
    assert got == pytest.approx(expected, abs=1 / 36864)  # 36864 weights a block: one score
    assert all(r > 0 for r in got)


def test_owl_targets_one_per_block(archs, calibration):
    model = archs["llama"].build()
    before = [t.clone() for t in model.state_dict().values()]
    ratios = outlier_ratios(archs["llama"].build(), calibration)
    targets = owl_targets(model, calibration, 0.5)
    assert len(targets) == archs["llama"].n_blocks
    assert sum(targets) / len(targets) == pytest.approx(0.5, abs=1e-9)
    assert targets == pytest.approx(targets_from_ratios(ratios, 0.5, 0.08))
    assert (targets[0] < targets[1]) == (ratios[0] > ratios[1])
    assert owl_targets(model, calibration, "50%", lam=0.0) == pytest.approx([0.5, 0.5])
    # a dense pass: the model is left exactly as it was
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(),
                                                  strict=True))


def test_nm_target_refused(archs, calibration):
    with pytest.raises(ValueError, match="OWL .*unstructured.*2:4"):
        owl_targets(archs["llama"].build(), calibration, "2:4")
    with pytest.raises(ValueError, match="OWL .*unstructured"):
        owl_targets(archs["llama"].build(), calibration, Target(n=4, m=8))


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "wanda"])
@pytest.mark.parametrize("request_", [0.5, 0.7])
def test_pruning_with_owl_targets(archs, calibration, method, request_):
    arch = archs["llama"]
    targets = owl_targets(arch.build(), calibration, request_, lam=0.1)
    assert len(set(targets)) == len(targets)  # really non-uniform
    model = arch.build()
    report = prune_model(model, get_method(method), Target(request_), calibration,
                         block_targets=targets)
    per_block = report.per_block()
    for index, target in enumerate(targets):
        if method == "wanda":  # int(cols x ratio) per row: at most one weight per row short
            assert target - 1 / 64 <= per_block[index] <= target + 1e-9
        else:  # one count per matrix (per 128-column block for SparseGPT)
            assert per_block[index] == pytest.approx(target, abs=2e-4)
    if method != "wanda":
        assert report.overall == pytest.approx(request_, abs=0.005)


def test_block_targets_must_match_the_blocks(archs, calibration):
    with pytest.raises(ValueError, match="block_targets has 3 entries.*2 decoder blocks"):
        prune_model(archs["llama"].build(), get_method("magnitude"), Target(0.5), calibration,
                    block_targets=[0.5, 0.5, 0.5])


def test_zero_block_target_leaves_the_block_dense(archs, calibration):
    arch = archs["opt"]
    model, dense = arch.build(), arch.build()
    report = prune_model(model, get_method("wanda"), Target(0.5), calibration,
                         block_targets=[Target(0.0), Target(0.6)])
    assert report.per_block()[0] == 0.0
    assert report.per_block()[1] == pytest.approx(0.6, abs=1 / 64)
    for p_model, p_dense in zip(arch.blocks(model)[0].parameters(),
                                arch.blocks(dense)[0].parameters(), strict=True):
        assert torch.equal(p_model, p_dense)


# -- OWL as a setting of the method: its prepare step walks the runner's one traversal ------------
@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "wanda"])
def test_owl_setting_prepares_the_same_targets_with_one_capture_per_walk(archs, calibration,
                                                                         method, monkeypatch):
    """OWL's dense walk uses block 0's captured inputs up (each block's outputs are written
    over them) and the pruning walk captures them again, so one copy of the calibration
    activations exists at a time; the targets and masks are those of explicit targets."""
    arch = archs["llama"]
    targets = owl_targets(arch.build(), calibration, 0.6, M=3.0, lam=0.1)
    explicit = arch.build()
    want = prune_model(explicit, get_method(method), Target(0.6), calibration,
                       block_targets=targets)
    captures = []
    original = runner.capture_inputs
    monkeypatch.setattr(runner, "capture_inputs",
                        lambda *a, **k: captures.append(1) or original(*a, **k))
    model = arch.build()
    got = prune_model(model, get_method(method, owl=OWL(M=3.0, lam=0.1)), Target(0.6),
                      calibration)
    assert len(captures) == 2  # OWL's dense walk, then the pruning walk
    assert got.block_targets == pytest.approx(targets, abs=1e-12)
    assert got.per_block() == want.per_block()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  explicit.state_dict().values(), strict=True))


def test_owl_block_range_keeps_the_rest_dense_and_averages_inside(archs, calibration):
    arch = archs["llama"]
    model = arch.build()
    report = prune_model(model, get_method("wanda", owl=OWL()), Target(0.5), calibration,
                         block_range=(1, 2))
    assert report.block_targets == [0.0, pytest.approx(0.5)]
    assert report.per_block()[0] == 0.0


def test_owl_is_refused_where_it_has_no_meaning(archs, calibration):
    with pytest.raises(ValueError, match="OWL layer-wise sparsity does not work with sparsellm"):
        get_method("sparsellm", owl=OWL())
    with pytest.raises(ValueError, match="OWL lambda"):
        OWL(lam=0.7)
    with pytest.raises(ValueError, match="OWL .*unstructured"):
        prune_model(archs["llama"].build(), get_method("wanda", owl=OWL()), Target(n=2, m=4),
                    calibration)


def test_methods_keep_no_state_between_runs(archs, calibration):
    """What a block teaches (SparseLLM's FFN errors, its warning) is in the report's notes; the
    method instance is the same before and after, so two runs with it agree."""
    arch = archs["llama"]
    method = get_method("sparsellm", iterations=2)
    before = dict(vars(method))
    first = prune_model(arch.build(), method, Target(0.5), calibration)
    assert vars(method) == before
    second = prune_model(arch.build(), method, Target(0.5), calibration)
    assert set(first.notes) == {0, 1} and first.notes == second.notes
    assert all(len(note["ffn_errors"]) == 2 for note in first.notes.values())
