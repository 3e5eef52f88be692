"""The reference code's pruning loops, re-implemented for the benchmarks (not used by the engine).

The order of operations follows locuslab/wanda ``lib/prune.py`` (``prepare_calibration_input``,
``prune_wanda``, ``lib/layerwrapper.py``), RIA's ``prune_ria`` (the same loop) and
IST-DASLab/sparsegpt (``llama_sequential``,
``SparseGPT.add_batch`` / ``fasterprune``): one calibration window at a time through each
decoder layer with hooks on its linears, every linear of the layer pruned, the same windows
through the pruned layer again to give the next layer its inputs.  Llama-family models only
(``model.model.layers``), fp32 on the CPU, as ``bench/prune_bench.py --reference`` runs them.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn


class _Caught(Exception):
    """Stops the model's forward once layer 0 has its inputs."""


def layer0_inputs(model: nn.Module, calibration: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Each window's hidden states entering layer 0 ``[n, seqlen, hidden]`` and the keyword
    arguments layer 0 got (equal for every window: the last one's)."""
    caught: list[torch.Tensor] = []
    kwargs: dict[str, Any] = {}

    def catch(_module: nn.Module, args: tuple, given: dict) -> None:
        caught.append(args[0] if args else given.pop("hidden_states"))
        kwargs.clear()
        kwargs.update(given)
        raise _Caught

    handle = model.model.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for row in calibration:
            with contextlib.suppress(_Caught):
                model(input_ids=row.unsqueeze(0), use_cache=False)
    finally:
        handle.remove()
    return torch.cat(caught), kwargs


def _linears(layer: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


def _run_layer(layer: nn.Module, inps: torch.Tensor, outs: torch.Tensor, kwargs: dict) -> None:
    """The reference's loop: one window at a time, each output into ``outs``."""
    for j in range(inps.shape[0]):
        out = layer(inps[j].unsqueeze(0), **kwargs)
        outs[j] = out[0] if isinstance(out, tuple) else out


def _sequential(model: nn.Module, calibration: torch.Tensor, stats: Any, prune: Any) -> None:
    """Layer by layer: hooks feed ``stats(module)`` objects (``add_batch``) during a dense pass,
    ``prune(module, stat)`` each linear, then the pruned layer's outputs feed the next."""
    inps, kwargs = layer0_inputs(model, calibration)
    outs = torch.zeros_like(inps)
    for layer in model.model.layers:
        linears = _linears(layer)
        wrapped = {name: stats(module) for name, module in linears.items()}
        handles = [module.register_forward_hook(
            lambda _m, inp, _out, stat=wrapped[name]: stat.add_batch(inp[0].data))
            for name, module in linears.items()]
        _run_layer(layer, inps, outs, kwargs)
        for handle in handles:
            handle.remove()
        for name, module in linears.items():
            prune(module, wrapped[name])
        _run_layer(layer, inps, outs, kwargs)
        inps, outs = outs, inps


def _next_batch(stats: Any, inp: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Both references' ``add_batch`` prologue: the batch's tokens as columns ``[in, tokens]``,
    and the factor the running average decays by, ``stats.nsamples`` counting the batch's
    sequences."""
    if len(inp.shape) == 2:
        inp = inp.unsqueeze(0)
    tmp = inp.shape[0]
    decay = stats.nsamples / (stats.nsamples + tmp)
    stats.nsamples += tmp
    return inp.reshape((-1, inp.shape[-1])).t(), decay


# -- Wanda ----------------------------------------------------------------------------------------
class WandaStats:
    """``WrappedGPT``: the running average of the squared input norms."""

    def __init__(self, module: nn.Linear) -> None:
        self.scaler_row = torch.zeros(module.weight.shape[1])
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        inp, decay = _next_batch(self, inp)
        self.scaler_row *= decay
        self.scaler_row += torch.norm(inp.type(torch.float32), p=2, dim=1) ** 2 / self.nsamples


@torch.no_grad()
def wanda(model: nn.Module, calibration: torch.Tensor, sparsity: float, n: int = 0,
          m: int = 0) -> None:
    """``prune_wanda``: per output row (unstructured) or per M-column group (N:M)."""
    def prune(module: nn.Linear, stats: WandaStats) -> None:
        metric = torch.abs(module.weight.data) * torch.sqrt(stats.scaler_row.reshape((1, -1)))
        mask = torch.zeros_like(metric) == 1
        if n:
            for start in range(0, metric.shape[1], m):
                group = metric[:, start:start + m].float()
                mask.scatter_(1, start + torch.topk(group, n, dim=1, largest=False)[1], True)
        else:
            order = torch.sort(metric, dim=-1, stable=True)[1]
            mask.scatter_(1, order[:, :int(metric.shape[1] * sparsity)], True)
        module.weight.data[mask] = 0

    _sequential(model, calibration, WandaStats, prune)


@torch.no_grad()
def ria(model: nn.Module, calibration: torch.Tensor, sparsity: float, n: int = 0,
        m: int = 0, a: float = 0.5) -> None:
    """``prune_ria`` (RIA's repository; no reallocation): relative importance x norm ** a,
    one threshold per matrix, or N:M groups."""
    def prune(module: nn.Linear, stats: WandaStats) -> None:
        w = module.weight.data.clone()
        metric = ((torch.abs(w) / torch.sum(torch.abs(w), dim=0)
                   + torch.abs(w) / torch.sum(torch.abs(w), dim=1).reshape(-1, 1))
                  * (torch.sqrt(stats.scaler_row.reshape((1, -1)))) ** a)
        if n:
            mask = torch.zeros_like(metric) == 1
            for start in range(0, metric.shape[1], m):
                group = metric[:, start:start + m].float()
                mask.scatter_(1, start + torch.topk(group, n, dim=1, largest=False)[1], True)
        else:
            mask = metric <= torch.sort(metric.flatten())[0][int(w.numel() * sparsity)]
        module.weight.data[mask] = 0

    _sequential(model, calibration, WandaStats, prune)


# -- SparseGPT ------------------------------------------------------------------------------------
class Hessian:
    """``SparseGPT.add_batch``: H = (2 / n) sum X X^T as a running average."""

    def __init__(self, module: nn.Linear) -> None:
        self.H = torch.zeros((module.weight.shape[1],) * 2)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        inp, decay = _next_batch(self, inp)
        self.H *= decay
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())


def _inverse_factor(h: torch.Tensor, w: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Dead inputs fixed, H dampened, the upper Cholesky factor of its inverse."""
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    diag = torch.arange(h.shape[0])
    h[diag, diag] += percdamp * torch.mean(torch.diag(h))
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def _block_mask(w1: torch.Tensor, hinv1: torch.Tensor, sparsity: float, n: int) -> torch.Tensor:
    if n:
        return torch.zeros_like(w1) == 1
    tmp = w1 ** 2 / (torch.diag(hinv1).reshape((1, -1))) ** 2
    return tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]


def fasterprune(module: nn.Linear, stats: Hessian, sparsity: float, n: int = 0, m: int = 0,
                blocksize: int = 128, percdamp: float = 0.01) -> None:
    """``SparseGPT.fasterprune`` without quantization: OBS over blocks of columns."""
    w = module.weight.data.clone().float()
    hinv = _inverse_factor(stats.H, w, percdamp)
    columns = w.shape[1]
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        mask1 = _block_mask(w1, hinv1, sparsity, n)
        for i in range(i2 - i1):
            col, d = w1[:, i], hinv1[i, i]
            if n and i % m == 0:
                tmp = w1[:, i:i + m] ** 2 / (torch.diag(hinv1)[i:i + m].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, n, dim=1, largest=False)[1], True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / d
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    module.weight.data = w.reshape(module.weight.shape).to(module.weight.data.dtype)


@torch.no_grad()
def sparsegpt(model: nn.Module, calibration: torch.Tensor, sparsity: float, n: int = 0,
              m: int = 0) -> None:
    """``llama_sequential``: every linear of a layer pruned from one dense pass."""
    _sequential(model, calibration, Hessian,
                lambda module, stats: fasterprune(module, stats, sparsity, n, m))


LOOPS = {"wanda": wanda, "ria": ria, "sparsegpt": sparsegpt}
