"""CoreInfer (Wang et al. 2024): sentence-level core neurons, selected at pre-fill, used in decode.

FFN neurons are the intermediate units: Llama-family ``act(gate(x)) * up(x)``, OPT ``fc1`` outputs
(after ReLU).  :func:`apply_coreinfer` converts a loaded transformers model in place and returns a
:class:`CoreInferHandle`; ``model.generate`` and lm-eval's ``HFLM`` drive the converted model as
usual, and ``handle.remove()`` puts the original modules back (bit-identical dense outputs).

What a converted block does
---------------------------
* Pre-fill (a forward with an empty KV cache: the prompt): the FFN runs **dense** and selects the
  core neurons of every sequence.  Token-wise: each token keeps its top ``limit`` neurons by
  activation value, ``limit = int(token_sparsity * #positive activations / #tokens)`` (counted
  over that sequence's tokens).  Sentence-wise: count for each neuron how many tokens chose it and
  keep the ``int(d_ffn * sparsity)`` most frequent (``sparsity`` is the fraction KEPT).  As in the
  authors' code, only neurons chosen by at least one token are candidates, so fewer may be kept
  when the tokens choose few distinct neurons (ReLU models with few positive activations: seed 003
  measured 0.26-0.32 on OPT-6.7b for a 0.4 setting).  Ties: the lower neuron index wins.
* Decode (a forward with a non-empty KV cache; normally one token per sequence): only the kept
  neurons are computed, with weights gathered once per prompt (rows of up/gate or fc1 and its
  bias, columns of down or fc2) -- less work, not a multiply by a 0/1 mask.
* OPT ranks neurons by the fc1 output before the ReLU: the same order and the same count of
  positives as after it, and a deterministic order among the zeros.
* Batches: the selection is per sequence (pad tokens, known from the 2-D ``attention_mask`` that
  ``generate`` passes, are left out).  One sequence decodes with plain matrix-vector products; a
  batch pads the per-sequence kept sets to the largest with zero weights and uses batched
  products (measured kept fractions count only the real neurons).  Beam search works (the beams of
  one prompt share its selection); a decode whose batch size differs from the pre-fill's fails.
* Phase: a forward pre-hook on the model reads ``past_key_values`` and ``use_cache``.  A forward
  that builds no cache (``use_cache=False``, e.g. lm-eval's loglikelihood calls on a model loaded
  by ``core.models``) runs dense and skips the selection, since nothing can decode from it.
  Blocks called without the model (no hook) fall back to "more than one token = pre-fill".
  ``generate`` uses a cache even when ``config.use_cache`` is False; ``generate(use_cache=False)``
  would run dense at every step (reported as no decode steps).

What it means for lm-eval (decision)
------------------------------------
The paper evaluates generation tasks.  A loglikelihood request (multiple choice, and perplexity)
is one dense forward over context + continuation: it is a pre-fill, so CoreInfer never acts and
the score is the dense model's -- which is why every configuration in seed 003's BertaQA and
CommonsenseQA tables has the same accuracy.  We do not sparsify that pre-fill (that would let the
answer's own tokens choose the neurons used to score it).  The handle reports it instead:
``stats().decode_steps == 0`` and ``stats().acted is False``, so a caller can label such a score
"CoreInfer did not act".  For a causal CoreInfer score on loglikelihood tasks use
:mod:`core.activation.loglikelihood`: it pre-fills the context (dense, selects) and scores the
continuation as cached forwards (sparse), i.e. what generation of the answer would compute.  A
one-token answer is still scored by the dense pre-fill, exactly as in generation.

The converted model shares its parameters with the original modules (same ``state_dict`` keys);
the gathered copies (``3 x kept x hidden`` per block and sequence for Llama) are not parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.engine.activation.measure import CoreInferStats, DecodeMeter, DecodeProbe
from core.engine.adapters import Adapter, get_adapter
from core.engine.masks import Selection, checked_selection

SUPPORTED_FAMILIES = ("llama", "opt")
DEFAULT_SPARSITY = 0.4
DEFAULT_TOKEN_SPARSITY = 0.2
_MARKER = "_sparsebench_coreinfer"


class CoreInferError(ValueError):
    """Bad CoreInfer parameters or an unsupported model."""


# -- selection (pure functions on activations) ---------------------------------------------------
def kept_count(d_ffn: int, fraction: float) -> int:
    """Neurons kept for a kept ``fraction``: ``int(d_ffn * fraction)`` (float noise ignored)."""
    return int(d_ffn * fraction + 1e-9)


def token_limit(acts: torch.Tensor, token_sparsity: float) -> int:
    """``int(token_sparsity * #positive activations / #tokens)``; ``acts`` is [tokens, d_ffn]."""
    _check_shape(acts)
    return _limit(int(torch.count_nonzero(acts > 0)), acts.shape[0], token_sparsity)


def _check_shape(acts: torch.Tensor) -> None:
    if acts.dim() != 2 or acts.shape[0] == 0:
        raise ValueError(f"expected activations [tokens, d_ffn] with tokens > 0, got "
                         f"{tuple(acts.shape)}")


def _limit(positives: int, tokens: int, token_sparsity: float) -> int:
    return int(token_sparsity * positives / tokens)


def neuron_counts(acts: torch.Tensor, token_sparsity: float) -> torch.Tensor:
    """For each neuron, how many tokens have it among their top ``limit`` (ties: lower index).

    A token's top ``limit`` are the neurons whose values reach its ``limit``-th largest value,
    unless that value ties with the next one; those tokens are redone with a stable sort.  On the
    CPU the work is done by numpy (its partition and boolean counts are 3-8x faster than torch's
    here, with the same results); elsewhere by torch on the tensors' device."""
    if acts.device.type == "cpu":
        return torch.from_numpy(_cpu_counts(acts, token_sparsity))
    _check_shape(acts)
    return _counts_torch(acts.detach().float(), token_sparsity)


def _cpu_counts(acts: torch.Tensor, token_sparsity: float) -> np.ndarray:
    """``neuron_counts`` of CPU activations, as a numpy array."""
    _check_shape(acts)
    return _counts_numpy(acts.detach().float().numpy(), token_sparsity)


def _counts_numpy(values: np.ndarray, token_sparsity: float) -> np.ndarray:
    tokens, d_ffn = values.shape
    limit = _limit(int(np.count_nonzero(values > 0)), tokens, token_sparsity)
    if limit == 0 or limit >= d_ffn:
        return np.full(d_ffn, tokens if limit else 0, dtype=np.int64)
    position = d_ffn - limit
    parted = np.partition(values, position, axis=1)
    kth = parted[:, position:position + 1]
    chosen = values >= kth
    # A token has more than ``limit`` values at or above its cut exactly when a value the
    # partition left below the cut equals it (one max instead of counting every row).
    ties = np.flatnonzero(parted[:, :position].max(axis=1) >= kth[:, 0])
    if len(ties):
        top = np.argsort(-values[ties], axis=1, kind="stable")[:, :limit]
        chosen[ties] = False
        chosen[ties[:, None], top] = True
    if tokens < np.iinfo(np.uint16).max:  # summing bytes into 16 bits: 4x faster than 64
        return chosen.view(np.uint8).sum(axis=0, dtype=np.uint16).astype(np.int64)
    return np.count_nonzero(chosen, axis=0).astype(np.int64)


def _counts_torch(values: torch.Tensor, token_sparsity: float) -> torch.Tensor:
    tokens, d_ffn = values.shape
    limit = token_limit(values, token_sparsity)
    if limit == 0 or limit >= d_ffn:
        return torch.full((d_ffn,), tokens if limit else 0, dtype=torch.long,
                          device=values.device)
    kth = torch.kthvalue(values, d_ffn - limit + 1, dim=1, keepdim=True).values
    chosen = values >= kth
    ties = (chosen.sum(dim=1) > limit).nonzero().flatten()
    if len(ties):
        top = torch.sort(values[ties], dim=1, descending=True, stable=True).indices[:, :limit]
        chosen[ties] = False
        chosen[ties.unsqueeze(1), top] = True
    return chosen.sum(dim=0)


def core_neurons(acts: torch.Tensor, token_sparsity: float, keep: int,
                 selection: Selection = "reference") -> torch.Tensor:
    """Sentence-wise core neurons of one sequence: sorted indices, at most ``keep`` of them.

    The ``keep`` most frequent among the neurons some token chose.  Ties in the counts:
    ``reference`` ranks the chosen neurons (in index order) with the reference code's
    ``argsort(counts, descending=True)`` (not stable); ``exact`` keeps the lower index first.
    On the CPU only that ranking is torch's (its tie order is the reference's); the rest is
    numpy, which costs a block's pre-fill a fifth of torch's small-tensor calls.
    """
    reference = checked_selection(selection) == "reference"
    if acts.device.type == "cpu":
        counts = _cpu_counts(acts, token_sparsity)
        chosen = np.flatnonzero(counts)  # ascending, as the reference's unique(return_counts)
        if len(chosen) > keep:
            ranks = counts[chosen]
            order = (torch.argsort(torch.from_numpy(ranks), descending=True).numpy()
                     if reference else np.argsort(-ranks, kind="stable"))
            chosen = np.sort(chosen[order[:keep]])
        return torch.from_numpy(chosen.astype(np.int64, copy=False))
    return _core_neurons_torch(acts, token_sparsity, keep, reference)


def _core_neurons_torch(acts: torch.Tensor, token_sparsity: float, keep: int, reference: bool
                        ) -> torch.Tensor:
    """``core_neurons`` on the tensors' device, by torch alone."""
    _check_shape(acts)
    counts = _counts_torch(acts.detach().float(), token_sparsity)
    chosen = counts.nonzero().flatten()
    if reference:
        ranked = chosen[torch.argsort(counts[chosen], descending=True)]
    else:
        ranked = chosen[torch.sort(counts[chosen], descending=True, stable=True).indices]
    return torch.sort(ranked[:keep]).values


# -- per-block state -----------------------------------------------------------------------------
class _Phase:
    """Set by the model-level hooks for the duration of one forward."""

    def __init__(self) -> None:
        # "prefill" (empty cache, a cache is being built), "dense" (no cache at all: nothing can
        # decode from this forward, so nothing is selected), "decode", or None (no model forward)
        self.phase: str | None = None
        self.attention_mask: torch.Tensor | None = None


@dataclass
class _Gathered:
    """The kept weights of one block for the current prompt batch."""

    widths: list[int]  # kept neurons per sequence
    in_w: list[torch.Tensor]  # per input projection: [k, H] (one sequence) or [B, H, kmax]
    in_b: list[torch.Tensor | None]  # [k] or [B, 1, kmax]
    out_w: torch.Tensor  # [H_out, k] or [B, kmax, H_out]
    out_b: torch.Tensor | None  # [H_out]

    def project_in(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """``x`` ``[B, T, H]`` -> the kept neurons' pre-activations ``[B, T, k]``."""
        if len(self.widths) == 1:
            return F.linear(x, self.in_w[i], self.in_b[i])
        out = torch.bmm(x, self.in_w[i])
        return out if self.in_b[i] is None else out + self.in_b[i]

    def project_out(self, h: torch.Tensor) -> torch.Tensor:
        if len(self.widths) == 1:
            return F.linear(h, self.out_w, self.out_b)
        out = torch.bmm(h, self.out_w)
        return out if self.out_b is None else out + self.out_b


class _BlockState:
    def __init__(self, index: int, d_ffn: int, fraction: float, token_sparsity: float,
                 phase: _Phase, meter: DecodeMeter,
                 inputs: list[nn.Module], output: nn.Module,
                 selection: Selection = "reference"):
        self.index = index
        self.selection = selection
        self.d_ffn = d_ffn
        self.fraction = fraction
        self.keep = kept_count(d_ffn, fraction)
        self.token_sparsity = token_sparsity
        self.phase = phase
        self.meter = meter
        self.inputs = inputs  # modules whose weight rows (and bias) are gathered
        self.output = output  # module whose weight columns are gathered
        self.kept: list[torch.Tensor] | None = None
        self.gathered: _Gathered | None = None
        self.layer_shape: tuple[int, int] | None = None  # OPT: (batch, tokens) of this forward
        self.sparse_active = False  # OPT: fc1 produced kept-only activations for fc2

    def is_prefill(self, tokens: int) -> bool:
        if self.phase.phase is not None:
            return self.phase.phase in ("prefill", "dense")
        return tokens > 1 or self.kept is None

    def select(self, acts: torch.Tensor) -> None:
        """Choose the core neurons of each sequence from ``acts`` ``[B, T, d_ffn]``."""
        if self.phase.phase == "dense":
            return  # no KV cache is built: no decode can use a selection (lm-eval loglikelihood)
        batch, tokens = acts.shape[:2]
        valid = None
        mask = self.phase.attention_mask
        if (mask is not None and mask.dim() == 2 and mask.shape[0] == batch
                and mask.shape[1] >= tokens):
            valid = mask[:, -tokens:].bool()
        kept = []
        with torch.no_grad():
            for b in range(batch):
                rows = acts[b] if valid is None else acts[b][valid[b].to(acts.device)]
                if rows.shape[0] == 0:
                    kept.append(torch.zeros(0, dtype=torch.long, device=acts.device))
                else:
                    kept.append(core_neurons(rows, self.token_sparsity, self.keep,
                                              self.selection))
        self.kept = kept
        self.gathered = None  # gathered lazily at the first decode: pre-fill-only work is cheap
        self.meter.on_selection(self.index, [len(k) for k in kept])

    def sparse(self, batch: int) -> _Gathered:
        if self.kept is None:
            raise RuntimeError(
                f"CoreInfer block {self.index}: a cached (decode) forward came before any "
                "pre-fill; convert the model before the prompt's first forward")
        if len(self.kept) != batch:
            raise RuntimeError(
                f"CoreInfer block {self.index}: decode batch {batch} differs from the pre-fill "
                f"batch {len(self.kept)} (the core neurons are selected per sequence)")
        if self.gathered is None:
            self.gathered = self._gather()
        return self.gathered

    @torch.no_grad()
    def _gather(self) -> _Gathered:
        assert self.kept is not None
        widths = [len(k) for k in self.kept]
        out_weight = self.output.weight.detach()
        out_bias = None if self.output.bias is None else self.output.bias.detach()
        if len(self.kept) == 1:
            idx = self.kept[0].to(out_weight.device)
            in_w = [m.weight.detach().index_select(0, idx).contiguous() for m in self.inputs]
            in_b = [None if m.bias is None else m.bias.detach().index_select(0, idx)
                    for m in self.inputs]
            out_w = out_weight.index_select(1, idx).contiguous()
            return _Gathered(widths, in_w, in_b, out_w, out_bias)
        kmax = max(widths)
        in_w, in_b = [], []
        for module in self.inputs:
            weight = module.weight.detach()
            w = weight.new_zeros(len(widths), weight.shape[1], kmax)
            b = None if module.bias is None else weight.new_zeros(len(widths), 1, kmax)
            for s, idx in enumerate(self.kept):
                idx = idx.to(weight.device)
                w[s, :, : len(idx)] = weight.index_select(0, idx).t()
                if b is not None:
                    b[s, 0, : len(idx)] = module.bias.detach().index_select(0, idx)
            in_w.append(w)
            in_b.append(b)
        out_w = out_weight.new_zeros(len(widths), kmax, out_weight.shape[0])
        for s, idx in enumerate(self.kept):
            out_w[s, : len(idx)] = out_weight.index_select(1, idx.to(out_weight.device)).t()
        return _Gathered(widths, in_w, in_b, out_w, out_bias)


# -- module wrappers ------------------------------------------------------------------------------
class CoreInferLlamaMLP(nn.Module):
    """Replaces a Llama-family MLP (gate/up/down + act_fn); holds the same submodules."""

    def __init__(self, mlp: nn.Module, state: _BlockState):
        super().__init__()
        self.gate_proj = mlp.gate_proj
        self.up_proj = mlp.up_proj
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn
        self.probe = DecodeProbe()
        self.coreinfer = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.coreinfer
        if state.is_prefill(x.shape[-2]):
            hidden = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
            state.select(hidden.detach().reshape(-1, *hidden.shape[-2:]))
            return self.down_proj(hidden)
        shape = x.shape
        x3 = x.reshape(-1, *shape[-2:])
        sparse = state.sparse(x3.shape[0])
        hidden = self.act_fn(sparse.project_in(x3, 0)) * sparse.project_in(x3, 1)
        hidden = self.probe(hidden, sparse.widths)
        return sparse.project_out(hidden).reshape(*shape[:-1], -1)


class _CoreInferLinear(nn.Module):
    """Takes the place of an OPT linear with the same ``weight``/``bias`` parameters (so the
    state dict keeps its names) and the block's CoreInfer state."""

    def __init__(self, linear: nn.Linear, state: _BlockState):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.coreinfer = state


class CoreInferFc1(_CoreInferLinear):
    """Replaces OPT's ``fc1``: selects the core neurons at pre-fill, computes only them after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.coreinfer
        batch, tokens = state.layer_shape or (1, x.shape[0])
        if state.is_prefill(tokens):
            state.sparse_active = False
            z = F.linear(x, self.weight, self.bias)
            state.select(z.detach().reshape(batch, tokens, -1))
            return z
        sparse = state.sparse(batch)
        state.sparse_active = True
        z = sparse.project_in(x.reshape(batch, tokens, -1), 0)
        return z.reshape(batch * tokens, -1)


class CoreInferFc2(_CoreInferLinear):
    """Replaces OPT's ``fc2``: dense after a dense ``fc1``, kept columns after a sparse one."""

    def __init__(self, linear: nn.Linear, state: _BlockState):
        super().__init__(linear, state)
        self.probe = DecodeProbe()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        state = self.coreinfer
        if not state.sparse_active:
            return F.linear(h, self.weight, self.bias)
        state.sparse_active = False
        batch, tokens = state.layer_shape or (1, h.shape[0])
        sparse = state.sparse(batch)
        h3 = self.probe(h.reshape(batch, tokens, -1), sparse.widths)
        return sparse.project_out(h3).reshape(batch * tokens, -1)


# -- conversion -----------------------------------------------------------------------------------
def _cached_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])  # legacy tuple cache
    return 0


def resolve_fractions(n_blocks: int, start: int, end: int | None, sparsity: float,
                      levels: Sequence[float] | None) -> dict[int, float]:
    """Kept fraction of each converted block: ``{block index: fraction}``.

    ``levels`` holds one fraction per converted block (``end - start`` values) or one per model
    block (``n_blocks`` values, those outside the range ignored).
    """
    end = n_blocks if end is None else end
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= n_blocks):
        raise CoreInferError(f"block range [{start}, {end}) must satisfy 0 <= start < end <= "
                             f"{n_blocks} (the model has {n_blocks} blocks)")
    blocks = list(range(start, end))
    if levels is None:
        if not 0 < sparsity <= 1:
            raise CoreInferError(f"sparsity is the kept fraction, in (0, 1]; got {sparsity}")
        return {b: float(sparsity) for b in blocks}
    levels = [float(v) for v in levels]
    if len(levels) == len(blocks):
        chosen = dict(zip(blocks, levels, strict=True))
    elif len(levels) == n_blocks:
        chosen = {b: levels[b] for b in blocks}
    else:
        raise CoreInferError(f"levels: give one kept fraction per converted block ({len(blocks)}) "
                             f"or per model block ({n_blocks}); got {len(levels)}")
    bad = {b: v for b, v in chosen.items() if not 0 <= v <= 1}
    if bad:
        raise CoreInferError(f"levels are kept fractions in [0, 1]; got {bad}")
    return chosen


class CoreInferHandle:
    """A CoreInfer conversion of one model; ``remove()`` restores the original modules."""

    def __init__(self, model: nn.Module, family: str, fractions: dict[int, float],
                 token_sparsity: float, meter: DecodeMeter, states: dict[int, _BlockState],
                 restore: list[tuple[nn.Module, str, nn.Module]], hooks: list[Any]):
        self.model = model
        self.family = family
        self.fractions = fractions
        self.token_sparsity = token_sparsity
        self.meter = meter
        self._states = states
        self._restore = restore
        self._hooks = hooks
        self.active = True

    @property
    def blocks(self) -> list[int]:
        return list(self.fractions)

    def stats(self) -> CoreInferStats:
        """Measured kept fractions (decode) and selections (pre-fill) since the last reset."""
        return self.meter.stats()

    def reset_stats(self) -> None:
        self.meter.reset()

    def selection(self) -> dict[int, list[torch.Tensor]]:
        """The current core neurons of every converted block, one index tensor per sequence."""
        return {b: list(s.kept) if s.kept is not None else [] for b, s in self._states.items()}

    def remove(self) -> None:
        """Put the original modules back and drop every hook and gathered copy (idempotent)."""
        if not self.active:
            return
        for hook in self._hooks:
            hook.remove()
        for parent, name, original in self._restore:
            setattr(parent, name, original)
        for state in self._states.values():
            state.kept = None
            state.gathered = None
        if getattr(self.model, _MARKER, None) is self:
            delattr(self.model, _MARKER)
        self.active = False

    def __enter__(self) -> CoreInferHandle:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()


_Restore = tuple[nn.Module, str, nn.Module]  # (parent, attribute, original module)


def apply_coreinfer(model: nn.Module, sparsity: float = DEFAULT_SPARSITY,
                    token_sparsity: float = DEFAULT_TOKEN_SPARSITY, start: int = 0,
                    end: int | None = None,
                    levels: Sequence[float] | None = None,
                    selection: Selection = "reference") -> CoreInferHandle:
    """Make ``model`` CoreInfer-sparse in place; the handle measures and undoes it.

    ``sparsity``: kept fraction of the FFN neurons (all converted blocks); ``levels``: one kept
    fraction per converted block instead (the sparsity-levels method); ``token_sparsity``: share
    of each token's positive activations it votes for; blocks ``start <= i < end`` are converted
    (default all; the authors keep the first and last few dense); ``selection``: how tied
    neuron counts are ranked (``core_neurons``).
    """
    checked_selection(selection)
    adapter = _checked_adapter(model, token_sparsity)
    blocks = adapter.blocks(model)
    fractions = resolve_fractions(len(blocks), start, end, sparsity, levels)
    phase = _Phase()
    d_ffn = {b: _ffn_width(adapter.family, blocks[b]) for b in fractions}
    meter = DecodeMeter(d_ffn, len(blocks), fractions)
    states: dict[int, _BlockState] = {}
    restore: list[_Restore] = []
    hooks: list[Any] = []
    wrap = _wrap_llama_block if adapter.family == "llama" else _wrap_opt_block
    for b, fraction in fractions.items():
        block = blocks[b]
        inputs, output = _ffn_modules(adapter.family, block)
        state = _BlockState(b, d_ffn[b], fraction, token_sparsity, phase, meter, inputs, output,
                            selection)
        block_restore, block_hooks = wrap(block, state)
        restore += block_restore
        hooks += block_hooks
        states[b] = state
    hooks.append(model.register_forward_pre_hook(_phase_hook(model, phase, meter),
                                                 with_kwargs=True))
    hooks.append(model.register_forward_hook(_end_of_forward_hook(phase, states),
                                             with_kwargs=True, always_call=True))
    handle = CoreInferHandle(model, adapter.family, fractions, token_sparsity, meter, states,
                             restore, hooks)
    setattr(model, _MARKER, handle)
    return handle


def _checked_adapter(model: nn.Module, token_sparsity: float) -> Adapter:
    """The model's adapter, after checking it can be converted with ``token_sparsity``."""
    if getattr(model, _MARKER, None) is not None:
        raise CoreInferError("the model is already CoreInfer-converted; remove() that first")
    adapter = get_adapter(model)
    if adapter.family not in SUPPORTED_FAMILIES:
        raise CoreInferError(f"CoreInfer supports the {' and '.join(SUPPORTED_FAMILIES)} "
                             f"families (SwiGLU / ReLU FFNs), not {adapter.family!r}")
    if not 0 < token_sparsity <= 1:
        raise CoreInferError(f"token_sparsity must be in (0, 1]; got {token_sparsity}")
    return adapter


def _ffn_modules(family: str, block: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """The FFN linears whose rows are gathered (gate and up, or fc1) and the one whose columns
    are gathered (down, or fc2)."""
    if family == "llama":
        mlp = block.mlp
        return [mlp.gate_proj, mlp.up_proj], mlp.down_proj
    return [block.fc1], block.fc2


def _wrap_llama_block(block: nn.Module, state: _BlockState) -> tuple[list[_Restore], list[Any]]:
    """Swap a Llama-family block's MLP for a CoreInfer one; return what to restore and the
    hooks added."""
    mlp = block.mlp
    wrapper = CoreInferLlamaMLP(mlp, state)
    block.mlp = wrapper
    return [(block, "mlp", mlp)], [state.meter.attach(wrapper.probe, state.index)]


def _wrap_opt_block(block: nn.Module, state: _BlockState) -> tuple[list[_Restore], list[Any]]:
    """Swap an OPT block's fc1 and fc2 for CoreInfer ones; return what to restore and the hooks
    added (the decode meter's and the layer-shape pre-hook)."""
    fc1, fc2 = block.fc1, block.fc2
    new_fc2 = CoreInferFc2(fc2, state)
    block.fc1 = CoreInferFc1(fc1, state)
    block.fc2 = new_fc2
    hooks = [state.meter.attach(new_fc2.probe, state.index),
             block.register_forward_pre_hook(_layer_shape_hook(state), with_kwargs=True)]
    return [(block, "fc1", fc1), (block, "fc2", fc2)], hooks


def _phase_hook(model: nn.Module, phase: _Phase, meter: DecodeMeter
                ) -> Callable[[nn.Module, tuple, dict], None]:
    """Model forward pre-hook: set the phase (pre-fill, dense or decode) and the attention mask
    for this forward, and count it."""

    def before(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        cached = _cached_length(kwargs.get("past_key_values"))
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(getattr(model, "config", None), "use_cache", True)
        if cached:
            phase.phase = "decode"
        else:
            phase.phase = "prefill" if use_cache else "dense"
        mask = kwargs.get("attention_mask")
        # an all-ones mask (no padding) selects from every token: the same as none, once per
        # forward instead of a masked copy of the activations in every block
        padded = isinstance(mask, torch.Tensor) and not bool(mask.all())
        phase.attention_mask = mask if padded else None
        if phase.phase in ("prefill", "dense"):
            meter.prefill_forwards += 1
        else:
            meter.decode_steps += 1

    return before


def _end_of_forward_hook(phase: _Phase, states: dict[int, _BlockState]
                         ) -> Callable[[nn.Module, tuple, dict, Any], None]:
    """Model forward hook (always called): clear the phase and every block's per-forward
    state."""

    def after(_m: nn.Module, _args: tuple, _kwargs: dict, _out: Any) -> None:
        phase.phase = None
        phase.attention_mask = None
        for state in states.values():
            state.sparse_active = False
            state.layer_shape = None

    return after


def _ffn_width(family: str, block: nn.Module) -> int:
    return block.mlp.up_proj.out_features if family == "llama" else block.fc1.out_features


def _layer_shape_hook(state: _BlockState):
    """OPT flattens [batch, tokens] before fc1: remember the shape from the layer's input."""

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
            state.layer_shape = (hidden.shape[0], hidden.shape[1])

    return hook
