"""SparseLLM (Bai et al. 2024): the FFN of a block pruned jointly, attention pruned by SparseGPT.

The FFN's linears are decoupled by auxiliary variables and pruned by alternating minimisation of

* OPT (``fc1 -> ReLU -> fc2``), z = fc1 pre-activation, p = fc2 input, Y = dense FFN output::

      alpha ||z - W1 X - b1||^2 + gamma ||p - ReLU(z)||^2 + beta ||W2 p + b2 - Y||^2

* Llama family (SwiGLU ``down(act(gate x) * up x)``), z = up output, s = gate output,
  p = down input::

      alpha ||z - Wu X||^2 + alpha ||s - Wg X||^2 + gamma ||p - silu(s) * z||^2
          + beta ||Wd p - Y||^2

Every iteration (see ``sparsellm_ffn``): after the first, refit the dense weights to the current
auxiliary variables; prune every FFN linear with SparseGPT (the input-side linears with the
Hessian of X, the output linear with the Hessian of p); then update p, z (and s) in closed form
or by a few gradient steps.  The first iteration is plain SparseGPT on the dense pass's inputs.
X, p and Y come from the runner's one dense pass of the block, through collectors.

Deviations from the official code (github.com/BaiTheBest/SparseLLM), each for a reason:

* Weight refits are damped least squares towards the dense pre-trained weights
  (``refit_least_squares``: lambda = dampening x mean diagonal, as SparseGPT damps its Hessian)
  where the official code takes a plain pseudo-inverse.  With calibration tokens below about 2x
  the FFN width the plain problem is under-determined and its minimum-norm answer drifts far from
  the pre-trained weights (the FFN error can end above SparseGPT's); the damped refit equals the
  dense weight when the targets are the dense outputs.
* The Llama s-update takes ``S_STEPS`` Gauss-Newton steps with a per-element trust factor that
  never raises the objective (``s_step``), where the official code takes two plain gradient steps
  at a fixed learning rate of 0.01: a step scaled by the curvature makes progress whatever
  the scale of z, and the objective is checked to fall.
* The p-update solves its normal equations through the Woodbury identity (``p_step``), of the
  hidden width rather than the FFN width: the same p, fewer operations.
* From the second iteration, the output linear's Hessian is ``2/n p^T p`` of the current p
  (one product), not a running average over batches: equal up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.engine.adapters import Adapter, set_weight_matrix, weight_matrix
from core.engine.masks import Selection
from core.engine.prune.methods import register
from core.engine.prune.methods.base import Collector, PruningMethod, Target
from core.engine.prune.methods.sparsegpt import Hessian, sparsegpt_prune
from core.engine.prune.methods.wanda import in_features

#: Per-architecture defaults (the paper / its released code): OPT 0.1 and Llama 5, 4 iterations.
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {
    "opt": {"alpha": 0.1, "beta": 0.1, "gamma": 0.1, "iterations": 4},
    "llama": {"alpha": 5.0, "beta": 5.0, "gamma": 5.0, "iterations": 4},
}
SUPPORTED = ("OPT (fc1 -> ReLU -> fc2) and the Llama family with a SwiGLU FFN (model types "
             "llama, mistral, qwen2, qwen3)")
#: "A few gradient steps": the OPT fc2 refit (cheap: on the Gram matrix) and the Llama s-update
#: (elementwise over tokens x FFN width, the costly one).
REFIT_STEPS = 10
S_STEPS = 5


class TokenData:
    """One FFN quantity over every calibration token (X, Y, p, z or s), kept as chunks of rows
    where the run's memory plan puts them (``store``: device and dtype; default: where they
    come from, in fp32), and worked on one chunk at a time in fp32 on ``device``."""

    def __init__(self, chunks: list[torch.Tensor], device: torch.device | str,
                 store: Store | None = None) -> None:
        self.device = device
        self.store = store
        self.chunks = [self.kept(c) for c in chunks]

    @classmethod
    def of(cls, value: torch.Tensor | TokenData, rows: int = 1 << 13,
           store: Store | None = None) -> TokenData:
        """``value`` itself, or a tensor cut into chunks of ``rows`` rows."""
        if isinstance(value, TokenData):
            return value
        return cls(list(value.split(rows)), value.device, store)

    def kept(self, chunk: torch.Tensor) -> torch.Tensor:
        """A chunk as it is stored (a new tensor: the caller's is never written)."""
        device, dtype = self.store or (chunk.device, torch.float32)
        moved = chunk.detach().to(device=device, dtype=dtype, copy=True)
        if moved.device.type == "cpu" and torch.cuda.is_available():
            moved = moved.pin_memory()
        return moved

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Chunk ``index`` in fp32 on the compute device."""
        return self.chunks[index].to(device=self.device, dtype=torch.float32,
                                     non_blocking=True)

    def __setitem__(self, index: int, value: torch.Tensor) -> None:
        self.chunks[index] = self.kept(value)

    def map(self, fn: Any) -> TokenData:
        """A new quantity: ``fn`` of each chunk."""
        return TokenData([fn(self[i]) for i in range(len(self))], self.device, self.store)

    def cross(self, other: TokenData | None = None, shift: torch.Tensor | None = None
              ) -> torch.Tensor:
        """sum over chunks of self^T (other - shift) (other = self: the Gram matrix), fp32."""
        total = None
        for i in range(len(self)):
            left = self[i]
            right = left if other is None else other[i]
            if shift is not None:
                right = right - shift
            part = left.t() @ right
            total = part if total is None else total.add_(part)
        assert total is not None, "no calibration tokens"
        return total

    def stacked(self) -> torch.Tensor:
        return torch.cat([self[i] for i in range(len(self))])


#: (device, dtype) where SparseLLM keeps its per-token data; None: the compute device, fp32.
Store = tuple[torch.device | str, torch.dtype]


class FFNActivations(Hessian):
    """A Hessian collector that also keeps the raw inputs (and, when asked, the outputs) of
    every calibration batch, where ``store`` says."""

    def __init__(self, in_features: int, keep_outputs: bool = False,
                 store: Store | None = None) -> None:
        super().__init__(in_features)
        self.wants_output = keep_outputs
        self.store = store
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def add_batch(self, inputs: torch.Tensor, sequences: int = 1,  # type: ignore[override]
                  outputs: torch.Tensor | None = None) -> None:
        super().add_batch(inputs, sequences)
        self.inputs.append(self._kept(inputs))
        if outputs is not None:
            self.outputs.append(self._kept(outputs))

    def _kept(self, value: torch.Tensor) -> torch.Tensor:
        device, dtype = self.store or (value.device, torch.float32)
        return value.detach().to(device=device, dtype=dtype)

    def data(self, device: torch.device | str, outputs: bool = False) -> TokenData:
        """The kept inputs (or outputs), as token data worked on ``device``."""
        chunks = self.outputs if outputs else self.inputs
        if outputs and not chunks:
            raise ValueError("sparsellm: the FFN output linear's outputs were not collected")
        data = TokenData([], device, self.store)
        data.chunks = chunks  # already stored as the store says
        return data

    def stacked_inputs(self) -> torch.Tensor:
        return torch.cat(self.inputs).float()

    def stacked_outputs(self) -> torch.Tensor:
        if not self.outputs:
            raise ValueError("sparsellm: the FFN output linear's outputs were not collected")
        return torch.cat(self.outputs).float()


@dataclass
class FFNWeights:
    """fp32 weights ``[out, in]`` and biases of one FFN (gate only for SwiGLU)."""

    up: torch.Tensor
    down: torch.Tensor
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    gate_bias: torch.Tensor | None = None


@dataclass
class FFNResult:
    weights: FFNWeights
    #: ||FFN(X) - Y||^2 on the calibration tokens after each iteration's pruning (only the
    #: first and the last unless every one was asked for).
    errors: list[float] = field(default_factory=list)


def ffn_forward(family: str, weights: FFNWeights, x: torch.Tensor) -> torch.Tensor:
    """The FFN's output for inputs ``x`` [tokens, hidden] with the given weights."""
    up = F.linear(x, weights.up, weights.up_bias)
    if family == "opt":
        hidden = F.relu(up)
    else:
        assert weights.gate is not None
        hidden = F.silu(F.linear(x, weights.gate, weights.gate_bias)) * up
    return F.linear(hidden, weights.down, weights.down_bias)


def _bias(bias: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    """The bias, or zeros of the weight's output size."""
    if bias is None:
        return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return bias


def _solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """matrix^-1 rhs for a symmetric positive (semi-)definite matrix."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.pinv(matrix, hermitian=True) @ rhs


def refit_least_squares(gram: torch.Tensor, cross: torch.Tensor, anchor: torch.Tensor,
                        dampening: float) -> torch.Tensor:
    """Dense least-squares weights W [out, in] with ``inputs W^T ~ targets``.

    ``gram`` = inputs^T inputs, ``cross`` = inputs^T targets (both summed over the token
    chunks).  Dampened like SparseGPT's Hessian (lambda = dampening x mean of the diagonal),
    towards ``anchor`` (the dense pre-trained weight) rather than towards zero:
    argmin ||inputs W^T - targets||^2 + lambda ||W - anchor||^2.  When the targets are exactly
    ``inputs anchor^T`` the answer is ``anchor`` itself.
    """
    damp = dampening * float(gram.diagonal().mean())
    if damp <= 0:
        damp = 1e-8 * max(float(gram.diagonal().mean()), 1.0)
    system = gram + damp * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return _solve_spd(system, cross + damp * anchor.t()).t().contiguous()


def refit_gradient(weight: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
                   steps: int = REFIT_STEPS) -> torch.Tensor:
    """A few steepest-descent steps (exact line search) on ||inputs W^T - targets||^2 from W
    (``gram`` = inputs^T inputs, ``cross`` = targets^T inputs)."""
    w = weight.clone()
    for _ in range(steps):
        grad = w @ gram - cross  # half the gradient
        curvature = float((grad @ gram * grad).sum())
        if curvature <= 0:
            break
        w -= (float((grad * grad).sum()) / curvature) * grad
    return w


def p_factor(down: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """The Cholesky factor of K = W W^T + (gamma / beta) I that every chunk's p-step solves
    with (falls back to K itself when it is not positive definite)."""
    system = down @ down.t()
    system.diagonal().add_(gamma / beta)
    chol, info = torch.linalg.cholesky_ex(system)
    return chol if int(info) == 0 else system


def p_step(down: torch.Tensor, residual: torch.Tensor, activation: torch.Tensor, beta: float,
           gamma: float, factor: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_p beta ||W p - r||^2 + gamma ||p - act||^2 for every token (a row of each input).

    The normal equations are (beta W^T W + gamma I) p = beta W^T r + gamma act, of the FFN's
    width; by the Woodbury identity their solution is p = act + W^T K^-1 (r - W act) with
    K = W W^T + (gamma / beta) I, of the (smaller) hidden width: the same p for 40% fewer
    operations on [tokens x width] matrices.  ``factor``: ``p_factor``'s, shared by chunks."""
    factor = p_factor(down, beta, gamma) if factor is None else factor
    rhs = (residual - activation @ down.t()).t()  # [hidden, tokens]
    lower = bool((factor.triu(1) == 0).all())
    correction = (torch.cholesky_solve(rhs, factor) if lower
                  else torch.linalg.pinv(factor, hermitian=True) @ rhs)
    return activation + correction.t() @ down


def z_step_relu(p: torch.Tensor, m: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """argmin_z gamma (p - ReLU z)^2 + alpha (z - m)^2, elementwise (two candidate branches)."""
    positive = ((gamma * p + alpha * m) / (gamma + alpha)).clamp_min(0.0)
    negative = m.clamp_max(0.0)
    cost_pos = gamma * (p - positive).pow(2) + alpha * (positive - m).pow(2)
    cost_neg = gamma * p.pow(2) + alpha * (negative - m).pow(2)
    return torch.where(cost_pos <= cost_neg, positive, negative)


def z_step_swiglu(p: torch.Tensor, m: torch.Tensor, s: torch.Tensor, alpha: float,
                  gamma: float) -> torch.Tensor:
    """argmin_z gamma (p - a z)^2 + alpha (z - m)^2, a = silu(s): (alpha m + gamma a p) / (alpha +
    gamma a^2).  With alpha = gamma this is REFERENCE.md's (m + a p) / (a^2 + 1)."""
    act = F.silu(s)
    return (alpha * m + gamma * act * p) / (alpha + gamma * act * act)


def s_step(s: torch.Tensor, p: torch.Tensor, z: torch.Tensor, n: torch.Tensor, alpha: float,
           gamma: float, steps: int = S_STEPS) -> torch.Tensor:
    """A few gradient steps on gamma (p - silu(s) z)^2 + alpha (s - n)^2 (elementwise).

    Each step is the gradient divided by the Gauss-Newton curvature 2 gamma (silu'(s) z)^2 +
    2 alpha, times a per-element trust factor; a step that would not lower the objective is not
    taken (and that element's factor halves; an accepted one doubles it back towards 1), so the
    objective never rises.  Elementwise, so it runs over row chunks that stay in the CPU cache.
    """
    out = torch.empty_like(s)
    rows = s.shape[0] if s.is_cuda or s.dim() < 2 else max(1, _CHUNK // max(s.shape[-1], 1))
    for start in range(0, s.shape[0], rows):
        part = slice(start, start + rows)
        out[part] = _s_steps(s[part], p[part], z[part], n[part], alpha, gamma, steps)
    return out


_CHUNK = 1 << 16  # elements per chunk of the elementwise s-update on CPU


def _s_steps(s: torch.Tensor, p: torch.Tensor, z: torch.Tensor, n: torch.Tensor, alpha: float,
             gamma: float, steps: int) -> torch.Tensor:
    def cost(values: torch.Tensor) -> torch.Tensor:
        return gamma * (p - F.silu(values) * z).pow(2) + alpha * (values - n).pow(2)

    scale = torch.ones_like(s)
    current = cost(s)
    for _ in range(steps):
        sig = torch.sigmoid(s)
        slope = sig * (1 + s * (1 - sig)) * z  # d(silu(s) z)/ds
        half_grad = alpha * (s - n) - gamma * (p - s * sig * z) * slope
        candidate = s - scale * half_grad / (gamma * slope * slope + alpha)
        new = cost(candidate)
        better = new < current
        s = torch.where(better, candidate, s)
        current = torch.where(better, new, current)
        scale = torch.where(better, (2 * scale).clamp_max(1.0), scale / 2)
    return s


def sparsellm_ffn(family: str, x: torch.Tensor | TokenData, y: torch.Tensor | TokenData,
                  p: torch.Tensor | TokenData, x_hessian: torch.Tensor, p_hessian: torch.Tensor,
                  sequences: int, dense: FFNWeights, target: Target, alpha: float, beta: float,
                  gamma: float, iterations: int, blocksize: int = 128, dampening: float = 0.01,
                  gate_hessian: torch.Tensor | None = None,
                  every_error: bool = False, selection: Selection = "reference") -> FFNResult:
    """Prune one FFN jointly; returns the pruned fp32 weights (biases unchanged).

    ``x`` [tokens, hidden]: the FFN inputs, ``y`` [tokens, hidden]: the dense FFN outputs,
    ``p`` [tokens, ffn]: the dense input of the output linear (tensors, or token data kept
    where the memory plan says: every step works one chunk of tokens at a time);
    ``x_hessian`` / ``p_hessian``: SparseGPT's Hessians of those inputs as collected
    (``sequences`` calibration windows), so the first iteration is exactly SparseGPT;
    ``gate_hessian`` defaults to ``x_hessian``.  ``every_error`` records the FFN error after
    every iteration, not only the first and last.
    """
    def prune(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
        return sparsegpt_prune(weight, hessian, target, blocksize, dampening, selection)

    x, y, p = TokenData.of(x), TokenData.of(y), TokenData.of(p)
    aux = _Auxiliary(family, x, y, p, dense)
    current = replace(dense)
    result = FFNResult(current)
    for iteration in range(iterations):
        if iteration == 0:
            up, down, gate, hp = dense.up, dense.down, dense.gate, p_hessian
        else:
            up, down, gate, hp = aux.refit(sequences, dampening)
        current = replace(current, up=prune(up, x_hessian), down=prune(down, hp))
        if gate is not None:
            current = replace(current, gate=prune(gate, gate_hessian if gate_hessian is not None
                                                  else x_hessian))
        result.weights = current
        if every_error or iteration in (0, iterations - 1):
            result.errors.append(aux.error(current))
        if iteration == iterations - 1:
            break
        aux.step(current, alpha, beta, gamma)
    return result


class _Auxiliary:
    """SparseLLM's auxiliary variables of one FFN (z, s, p) beside its data (X, Y), updated
    one chunk of tokens at a time."""

    def __init__(self, family: str, x: TokenData, y: TokenData, p: TokenData,
                 dense: FFNWeights) -> None:
        self.family, self.x, self.y, self.p, self.dense = family, x, y, p, dense
        self.gram_x = x.cross()
        self.b_up, self.b_down = _bias(dense.up_bias, dense.up), _bias(dense.down_bias,
                                                                        dense.down)
        self.z = x.map(lambda c: F.linear(c, dense.up, dense.up_bias))  # OPT: pre-activation
        self.s = (x.map(lambda c: F.linear(c, dense.gate, dense.gate_bias))
                  if family == "llama" else None)

    def activation(self, i: int) -> torch.Tensor:
        """The activation the current z (and s) give chunk ``i``."""
        if self.s is None:
            return F.relu(self.z[i])
        return F.silu(self.s[i]) * self.z[i]

    def error(self, weights: FFNWeights) -> float:
        """||FFN(X) - Y||^2 with ``weights``, over every token."""
        return float(sum(float((ffn_forward(self.family, weights, self.x[i]) - self.y[i])
                               .pow(2).sum()) for i in range(len(self.x))))

    def step(self, current: FFNWeights, alpha: float, beta: float, gamma: float) -> None:
        """The p-, z- (and s-) updates of every chunk, from the pruned weights."""
        factor = p_factor(current.down, beta, gamma)
        for i in range(len(self.x)):
            x = self.x[i]
            p = p_step(current.down, self.y[i] - self.b_down, self.activation(i), beta, gamma,
                       factor)
            m = F.linear(x, current.up, current.up_bias)  # the pruned up / fc1 output
            if self.s is None:
                self.z[i] = z_step_relu(p, m, alpha, gamma)
            else:
                s = self.s[i]
                z = z_step_swiglu(p, m, s, alpha, gamma)
                n = F.linear(x, current.gate, current.gate_bias)
                self.s[i] = s_step(s, p, z, n, alpha, gamma)
                self.z[i] = z
            self.p[i] = p

    def refit(self, sequences: int, dampening: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The dense weights refitted to the current auxiliary variables, and p's Hessian."""
        dense = self.dense
        gram_p = self.p.cross()
        hp = gram_p * (2.0 / max(sequences, 1))
        up = refit_least_squares(self.gram_x, self.x.cross(self.z, self.b_up), dense.up,
                                 dampening)
        if self.s is None:  # (Y - b)^T p: the fc2 refit's targets against its inputs
            cross = self.p.cross(self.y, self.b_down).t()
            return up, refit_gradient(dense.down, gram_p, cross), None, hp
        down = refit_least_squares(gram_p, self.p.cross(self.y, self.b_down), dense.down,
                                   dampening)
        gate = refit_least_squares(self.gram_x, self.x.cross(
            self.s, _bias(dense.gate_bias, dense.gate)), dense.gate, dampening)
        return up, down, gate, hp


def ffn_family(block: nn.Module, adapter: Adapter) -> str:
    """'opt' or 'llama' when the block's FFN is one SparseLLM handles; a clear error otherwise."""
    family = adapter.family
    if family not in FAMILY_DEFAULTS:
        raise ValueError(f"sparsellm supports {SUPPORTED}; this model's architecture is "
                         f"{family!r}. Use sparsegpt or wanda for it.")
    if adapter.ffn_activation:
        activation = block.get_submodule(adapter.ffn_activation)
    else:
        activation = getattr(block, "activation_fn", None)
    probe = torch.linspace(-6, 6, 49)
    expected, label = (F.relu, "ReLU") if family == "opt" else (F.silu, "SiLU (SwiGLU)")
    try:
        ok = activation is not None and torch.allclose(activation(probe), expected(probe),
                                                       atol=1e-4)
    except Exception:  # noqa: BLE001 - any failure means "not the activation we handle"
        ok = False
    if not ok:
        raise ValueError(f"sparsellm supports {SUPPORTED}; this {family} model's FFN activation "
                         f"is {type(activation).__name__}, not {label}.")
    return family


ARCH_DEFAULT = " (or empty for the architecture's default)"


def _weight(label: str) -> Any:
    return Field(None, gt=0, description=f"{label}; empty = the architecture's default "
                 "(OPT 0.1, Llama 5).", json_schema_extra={"rule": "> 0" + ARCH_DEFAULT})


class SparseLLMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float | None = _weight("Weight of the input-side fit ||z - W1 X||")
    beta: float | None = _weight("Weight of the output fit ||W2 p - Y||")
    gamma: float | None = _weight("Weight of the activation coupling ||p - act(z)||")
    iterations: int | None = Field(None, ge=1, description="Alternating-minimisation rounds; "
                                   "empty = 4.", json_schema_extra={
                                       "rule": "a whole number >= 1" + ARCH_DEFAULT})
    blocksize: int = Field(128, ge=1, description="SparseGPT columns per block.")
    dampening: float = Field(0.01, ge=0, lt=1, description="SparseGPT Hessian dampening.")


@register
class SparseLLM(PruningMethod):
    name = "sparsellm"
    description = ("Global FFN pruning by alternating minimisation with auxiliary variables "
                   "(attention by SparseGPT). OPT and Llama-family models; empty alpha/beta/"
                   "gamma/iterations = the architecture's defaults (OPT 0.1, Llama 5; 4 "
                   "iterations). Several times SparseGPT's time: its cost grows with the "
                   "calibration tokens; wants well over 2x the FFN width in tokens.")
    Params = SparseLLMParams

    def settings(self, family: str) -> dict[str, float]:
        """alpha, beta, gamma, iterations: the user's values, else the architecture's."""
        chosen = dict(FAMILY_DEFAULTS[family])
        for key in chosen:
            if self.params[key] is not None:
                chosen[key] = float(self.params[key])
        chosen["iterations"] = int(chosen["iterations"])
        return chosen

    def collector(self, module: nn.Module) -> Collector:
        return Hessian(in_features(module))

    def block_collectors(self, block: nn.Module, adapter: Adapter) -> dict[str, Collector]:
        """Hessians for every linear; the FFN's first linear also keeps X, the last p and Y."""
        ffn_family(block, adapter)
        stats: dict[str, Collector] = {}
        for name, module in adapter.linears(block).items():
            if name == adapter.ffn_up:
                stats[name] = FFNActivations(in_features(module), store=self.token_store)
            elif name == adapter.ffn_down:
                stats[name] = FFNActivations(in_features(module), keep_outputs=True,
                                             store=self.token_store)
            else:
                stats[name] = Hessian(in_features(module))
        return stats

    def prune(self, weight: torch.Tensor, stats: Collector | None, target: Target) -> torch.Tensor:
        assert isinstance(stats, Hessian), "SparseLLM needs calibration statistics"
        return sparsegpt_prune(weight, stats, target, int(self.params["blocksize"]),
                               float(self.params["dampening"]), self.selection)

    def prune_block(self, block: nn.Module, adapter: Adapter,
                    stats: dict[str, Collector], target: Target) -> dict[str, Any]:
        """Attention linears with SparseGPT, the FFN jointly; notes the FFN's errors (and a
        warning when the calibration tokens are too few for the FFN's width)."""
        family = ffn_family(block, adapter)
        ffn = {adapter.ffn_up, adapter.ffn_down, adapter.ffn_gate} - {None}
        linears = adapter.linears(block)
        for name, module in linears.items():
            if name not in ffn:
                set_weight_matrix(module, self.prune(weight_matrix(module).float(),
                                                     stats.get(name), target))
        up_stats, down_stats = stats.get(adapter.ffn_up), stats.get(adapter.ffn_down)
        if not (isinstance(up_stats, FFNActivations) and isinstance(down_stats, FFNActivations)):
            raise ValueError("sparsellm needs the FFN's calibration inputs and outputs; run it "
                             "through core.runner.prune_model")
        modules = [linears[adapter.ffn_up], linears[adapter.ffn_down],
                   linears[adapter.ffn_gate] if adapter.ffn_gate else None]
        dense = dense_ffn(*modules)
        gate_stats = stats.get(adapter.ffn_gate) if adapter.ffn_gate else None
        settings = self.settings(family)
        device = dense.up.device
        result = sparsellm_ffn(
            family, up_stats.data(device), down_stats.data(device, outputs=True),
            down_stats.data(device), up_stats.hessian, down_stats.hessian,
            down_stats.samples, dense, target, settings["alpha"], settings["beta"],
            settings["gamma"], int(settings["iterations"]), int(self.params["blocksize"]),
            float(self.params["dampening"]),
            gate_hessian=gate_stats.hessian if isinstance(gate_stats, Hessian) else None,
            selection=self.selection)
        for module, weight in zip(modules, (result.weights.up, result.weights.down,
                                            result.weights.gate), strict=True):
            if module is not None and weight is not None:
                set_weight_matrix(module, weight)
        notes: dict[str, Any] = {"ffn_errors": result.errors}
        tokens, width = sum(t.shape[0] for t in up_stats.inputs), dense.up.shape[0]
        if tokens < 2 * width:
            notes["warning"] = (
                f"sparsellm: {tokens} calibration tokens for an FFN {width} wide: its auxiliary "
                "least-squares problems are under-determined below about 2x the FFN width, and "
                "the result can be worse than SparseGPT's; use more calibration tokens.")
        return notes


def dense_ffn(up: nn.Module, down: nn.Module, gate: nn.Module | None) -> FFNWeights:
    """fp32 copies of one FFN's weights and biases, on the up linear's device."""
    device = weight_matrix(up).device

    def fp32(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().to(device=device, dtype=torch.float32)

    def matrix(module: nn.Module) -> torch.Tensor:
        return weight_matrix(module).to(device).float().clone()

    return FFNWeights(up=matrix(up), down=matrix(down), up_bias=fp32(up.bias),
                      down_bias=fp32(down.bias), gate=None if gate is None else matrix(gate),
                      gate_bias=None if gate is None else fp32(gate.bias))
