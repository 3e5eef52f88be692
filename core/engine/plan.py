"""The memory plan of a run, from the model's config alone (nothing is loaded).

For each phase (reading the text, capturing block 0's inputs, OWL's dense walk, pruning one
block with the chosen method, perplexity, zero-shot, saving) the plan gives the bytes the run
holds at its peak on the compute device and on the host, and the path it takes:

* weights: one decoder block at a time in the compute dtype (fp32 on a CPU without native
  half-precision arithmetic), the modules around the blocks when they are used;
* the windows' hidden states (calibration, perplexity): on the device when they fit beside a
  block, else on the host, moved to the device one window at a time;
* SparseLLM's FFN data (X, Y, p, z, s over every calibration token): on the device in fp32, else
  on the device in the run's dtype, else on the host in fp32; worked on in chunks of tokens;
* zero-shot: the whole model on the device when it fits, else offloaded (accelerate's
  ``device_map`` with ``max_memory``; what does not fit waits on the host or disk).

Preflight compares the plan with the device's total memory and the host's RAM at submit, and
with what is free when the run starts; the runner takes the plan's paths, so numbers in messages
agree with what the run then does.  On a CPU run device and host are the same memory: the
device figures are added to the host's.  The constants below were measured on this project's
CPU runs (``bench/scale_bench.py`` prints the plan beside the measured peaks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.engine.environment import native_bf16
from core.engine.masks import SORT_ENTRIES

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Resident memory of a run's process before any weight: Python, torch, transformers, a
#: tokenizer (measured: 0.42 GiB on CPU); a CUDA context adds host memory of its own.
RUNTIME_HOST = int(0.45 * GIB)
CUDA_HOST = int(1.5 * GIB)
CUDA_CONTEXT = int(0.5 * GIB)  # device memory a CUDA context and its kernels take
#: What tokenizing a text at once costs per token (the Rust tokenizer's scratch), and a
#: token's id afterwards.
TOKENIZE_BYTES = 450
ID_BYTES = 8
#: Tokens of the known texts, as a Llama tokenizer cuts them (evaluation: the test split, C4's
#: first 1100 validation documents; calibration: the train split, one C4 document at a time).
EVAL_TOKENS = {"wikitext2": 340_000, "ptb": 120_000, "c4": 520_000, "wiki-offline": 72_000}
CALIBRATION_TOKENS = {"wikitext2": 2_500_000, "ptb": 1_100_000, "c4": 20_000,
                      "wiki-offline": 700_000}
#: Tokens per byte of a text file (English runs about 4 bytes a token).
TOKENS_PER_BYTE = 0.3
ZERO_SHOT_CONTEXT = 2048  # the longest request lm-eval is assumed to send


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that decide its memory."""

    family: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    attention: int  # query width (heads x head dim)
    kv: int  # key / value width
    tied: bool
    learned_positions: int  # GPT-2 / OPT position embeddings (0 for rotary models)
    heads: int = 1


def settings(cfg: Any) -> dict[str, Any]:
    """The config's values as a dict (a transformers config or its raw JSON)."""
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))


def first(values: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` set in ``values`` (configs spell the same size differently)."""
    return next((values[n] for n in names if values.get(n) is not None), default)


def positions_of(cfg: Any) -> tuple[int, str] | None:
    """(positions, the config key that says so), or None when the config does not say."""
    values = settings(cfg)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(values.get(key), int) and values[key] > 0:
            return values[key], key
    return None


def shape_of(cfg: Any, family: str | None = None) -> Shape:
    """The sizes from a config, whatever names the architecture uses for them."""
    values = settings(cfg)
    model_type = str(values.get("model_type") or getattr(cfg, "model_type", ""))
    hidden = int(first(values, "hidden_size", "n_embd", "d_model"))
    heads = int(first(values, "num_attention_heads", "n_head", default=1))
    head_dim = int(first(values, "head_dim", default=hidden // heads))
    kv_heads = int(first(values, "num_key_value_heads", default=heads))
    positions = positions_of(cfg)
    return Shape(
        family=family or model_type, hidden=hidden,
        layers=int(first(values, "num_hidden_layers", "n_layer", "num_layers")),
        intermediate=int(first(values, "intermediate_size", "ffn_dim", "n_inner",
                               default=4 * hidden)),
        vocab=int(first(values, "vocab_size", default=0)), attention=heads * head_dim,
        kv=kv_heads * head_dim, tied=bool(values.get("tie_word_embeddings", True)),
        learned_positions=positions[0] if positions and model_type in ("gpt2", "opt") else 0,
        heads=heads)


def block_parameters(shape: Shape) -> int:
    """Weights of one decoder block (biases and norms left out: well under 1%)."""
    gated = shape.family == "llama"  # SwiGLU: gate, up and down
    attention = 2 * shape.hidden * shape.attention + 2 * shape.hidden * shape.kv
    return attention + (3 if gated else 2) * shape.hidden * shape.intermediate


def outside_parameters(shape: Shape) -> int:
    """Weights outside the blocks: embeddings, head (unless tied), learned positions."""
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    return embeddings + shape.learned_positions * shape.hidden


def parameter_count(shape: Shape) -> int:
    """Weights of the model."""
    return outside_parameters(shape) + shape.layers * block_parameters(shape)


def linear_inputs(shape: Shape) -> list[int]:
    """The input width of each prunable linear of a block."""
    hidden_inputs = {"llama": 6, "opt": 5, "gpt2": 3, "gpt_neox": 3}.get(shape.family, 4)
    return [shape.hidden] * hidden_inputs + [shape.intermediate]


# -- what a run does -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Work:
    """What a run does, in the plan's terms (sizes in tokens, the run's resolved dtype)."""

    dtype: str = "float32"
    device: str = "cpu"
    method: str | None = None  # None: no pruning (dense)
    samples: int = 0
    seqlen: int = 0
    owl: bool = False
    ppl_windows: int = 0  # windows of the largest perplexity text (0: no perplexity)
    ppl_seqlen: int = 0
    batch_size: int = 1
    zero_shot: bool = False  # the whole model is loaded (lm-eval, CoreInfer)
    offload: bool = True  # the whole model may be offloaded when it does not fit the device
    save: bool = False
    text_tokens: int = 0  # the largest text tokenized at once
    converts: bool = False  # the offline default is converted from its GGUF first (once)
    compute_dtype: str = ""  # '' = the dtype, or fp32 on a CPU (``compute_dtype_for``)

    @property
    def on_cpu(self) -> bool:
        return not self.device.startswith("cuda")

    @property
    def tokens(self) -> int:
        return self.samples * self.seqlen


def compute_dtype_for(dtype: str, device: str, native_bf16: bool = False) -> str:
    """The dtype blocks are computed in: the run's, but fp32 for half precision on a CPU
    (bf16 stays bf16 where the CPU has native bf16 arithmetic)."""
    if device.startswith("cuda") or dtype == "float32":
        return dtype
    return dtype if dtype == "bfloat16" and native_bf16 else "float32"


@dataclass(frozen=True)
class Phase:
    """Bytes held at a phase's peak, by part (``device`` and ``host``)."""

    name: str
    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())


@dataclass(frozen=True)
class MemoryPlan:
    """A run's phases and paths; ``device_budget`` / ``host_budget``: what it was fitted to."""

    phases: tuple[Phase, ...]
    activations: str = "device"  # where hidden states wait between blocks: device / host
    ffn_store: str = ""  # SparseLLM: 'device float32', 'device bfloat16', 'host float32'
    zero_shot: str = ""  # 'whole' or 'offloaded' ('' without zero-shot)
    compute_dtype: str = "float32"
    on_cpu: bool = True

    @property
    def peak_device(self) -> int:
        return max((p.device_bytes for p in self.phases), default=0)

    @property
    def peak_host(self) -> int:
        return max((p.host_bytes for p in self.phases), default=0)

    def peak_phase(self, where: str) -> Phase:
        key = (lambda p: p.device_bytes) if where == "device" else (lambda p: p.host_bytes)
        return max(self.phases, key=key)

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def describe(self) -> str:
        """One line per phase, for the run's log."""
        lines = [f"memory plan ({'CPU: host only' if self.on_cpu else 'device / host'}, "
                 f"compute {self.compute_dtype}, activations on the {self.activations}"
                 + (f", SparseLLM FFN data on the {self.ffn_store}" if self.ffn_store else "")
                 + (f", zero-shot {self.zero_shot}" if self.zero_shot else "") + "):"]
        for p in self.phases:
            where = (f"{gib(p.host_bytes)} host" if self.on_cpu
                     else f"{gib(p.device_bytes)} device, {gib(p.host_bytes)} host")
            lines.append(f"  {p.name}: {where}")
        return "\n".join(lines)


def gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


# -- the phases ---------------------------------------------------------------------------------
def _bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(dtype, 4)


def _runtime(work: Work) -> dict[str, int]:
    return {"runtime": RUNTIME_HOST + (0 if work.on_cpu else CUDA_HOST)}


def _context(work: Work) -> dict[str, int]:
    return {} if work.on_cpu else {"CUDA context": CUDA_CONTEXT}


def forward_bytes(shape: Shape, tokens: int, c: int) -> int:
    """Temporaries of one block's forward over ``tokens`` tokens: the attention's q, k, v and
    output, the FFN's intermediate activations (three for SwiGLU), the residual."""
    ffn = (3 if shape.family == "llama" else 2) * shape.intermediate
    return tokens * c * (ffn + 2 * shape.attention + 2 * shape.kv + 3 * shape.hidden)


def read_bytes(work: Work, params: int, largest: int, c: int) -> int:
    """Host memory of reading tensors (``params`` in all, the largest ``largest``) onto the
    compute device: on a GPU all of them wait on the host in the run's dtype until moved; on
    the CPU they are the weights themselves, with one more copy of the largest while it is
    converted to the compute dtype (none when that is the run's dtype)."""
    s = _bytes(work.dtype)
    if not work.on_cpu:
        return params * s
    return largest * s if c != s else 0


def write_bytes(shape: Shape, work: Work, c: int) -> int:
    """Host memory of writing one block: its tensors serialised as bytes, plus a copy in the
    run's dtype when they are computed in another dtype or on a GPU."""
    block = block_parameters(shape) * _bytes(work.dtype)
    return block * (2 if not work.on_cpu or c != _bytes(work.dtype) else 1)


def _largest_block_tensor(shape: Shape) -> int:
    return shape.hidden * max(shape.intermediate, shape.attention)


def method_bytes(shape: Shape, work: Work, c: int) -> dict[str, int]:
    """A block's method state and the working set of pruning its largest linear: an fp32
    copy of the weight, its scores, the mask and the result (Wanda: 13 bytes a weight, and its
    per-row sort's values and int64 indices for ``SORT_ENTRIES`` at a time; magnitude's one
    threshold about 18 bytes a weight); SparseGPT's Hessians, or (the larger) its widest
    linear's inverse (two ``in x in`` fp32 matrices) with three fp32 weight copies."""
    widths = linear_inputs(shape)
    largest = _largest_block_tensor(shape)
    method = work.method or ""
    if method == "magnitude":
        return {"scores": 18 * largest}
    if method in ("wanda", "ria"):  # RIA: two more fp32 temporaries of its relative scores
        return {"input norms": 4 * sum(widths),
                "scores": (13 + 8 * (method == "ria")) * largest
                + 12 * min(largest, SORT_ENTRIES)}
    hessians = 4 * sum(n * n for n in widths)
    # the widest linear (the FFN's output) is pruned last: the others' Hessians are gone by
    # then, its own is worked on in place (two matrices of its size at once)
    solve = 8 * max(widths) ** 2 + 12 * largest
    parts = {"Hessians": hessians, "SparseGPT solve": max(solve - hessians, 0)}
    if method == "sparsellm":
        parts.update(ffn_bytes(shape, work, "device float32"))
    return parts


def ffn_bytes(shape: Shape, work: Work, store: str) -> dict[str, int]:
    """SparseLLM's FFN data (X, Y over the hidden width; p, z, s over the FFN width; every
    calibration token) in ``store`` ('device float32' ...), and one chunk's temporaries on
    the device."""
    place, _, dtype = store.partition(" ")
    wide = 3 if shape.family == "llama" else 2
    data = work.tokens * (2 * shape.hidden + wide * shape.intermediate) * _bytes(dtype)
    chunk = max(work.seqlen, 1)  # SparseLLM works one calibration window's tokens at a time
    temporaries = 6 * chunk * shape.intermediate * 4
    grams = 4 * (shape.intermediate ** 2 + shape.hidden ** 2 + 2 * shape.hidden
                 * shape.intermediate)
    parts = {"FFN chunk": temporaries, "FFN Gram matrices": grams}
    parts["FFN data (host)" if place == "host" else "FFN data"] = data
    return parts


def _merged(work: Work, device: dict[str, int], host: dict[str, int]) -> tuple[dict[str, int],
                                                                                dict[str, int]]:
    """(device, host) parts; on a CPU run everything is host memory."""
    if work.on_cpu:
        return {}, {**host, **device}
    return device, host


def _phase(name: str, work: Work, device: dict[str, int], host: dict[str, int]) -> Phase:
    device, host = _merged(work, {**_context(work), **device}, {**_runtime(work), **host})
    return Phase(name, device, host)


def _stream(parts: dict[str, int], host: dict[str, int], label: str, value: int,
            one: int, activations: str) -> None:
    """Hidden states waiting between blocks: on the device, or on the host with one batch of
    them on the device."""
    if activations == "device":
        parts[label] = value
    else:
        host[label] = value
        parts[f"{label} (one batch)"] = one


def _calibration_phases(shape: Shape, work: Work, c: int, activations: str,
                        ffn_store: str) -> list[Phase]:
    """Capturing block 0's inputs, OWL's walk, pruning a block, writing it."""
    stream, one = work.tokens * shape.hidden * c, work.seqlen * shape.hidden * c
    block = block_parameters(shape) * c
    reading = read_bytes(work, block_parameters(shape), _largest_block_tensor(shape), c)
    phases = []
    device: dict[str, int] = {"embeddings and head": outside_parameters(shape) * c}
    host: dict[str, int] = {"reading embeddings": read_bytes(
        work, outside_parameters(shape), shape.vocab * shape.hidden, c)}
    _stream(device, host, "calibration activations", stream, one, activations)
    phases.append(_phase("capturing block inputs", work, device, host))
    window = forward_bytes(shape, work.seqlen, c)
    if work.owl:
        device = {"block": block, "forward": window,
                  "scores": 8 * _largest_block_tensor(shape)}
        host = {"reading a block": reading}
        _stream(device, host, "calibration activations", stream, one, activations)
        phases.append(_phase("OWL outlier ratios", work, device, host))
    device = {"block": block, "forward": window, **method_bytes(shape, work, c)}
    host = {"reading a block": reading}
    if work.method == "sparsellm":
        for key in [k for k in device if k.startswith("FFN")]:
            del device[key]
        ffn = ffn_bytes(shape, work, ffn_store)
        host.update({k: v for k, v in ffn.items() if k.endswith("(host)")})
        device.update({k: v for k, v in ffn.items() if not k.endswith("(host)")})
    _stream(device, host, "calibration activations", stream, one, activations)
    phases.append(_phase("pruning a block", work, device, host))
    device = {"block": block}
    host = {"writing a block": write_bytes(shape, work, c)}
    _stream(device, host, "calibration activations", stream, one, activations)
    phases.append(_phase("writing a block", work, device, host))
    return phases + [_writing_outside(shape, work)]


def _writing_outside(shape: Shape, work: Work) -> Phase:
    """Copying the embeddings and head into the written checkpoint (measured: one copy of
    them in the run's dtype; the file is read memory-mapped)."""
    return _phase("writing embeddings", work, {},
                  {"embeddings and head": outside_parameters(shape) * _bytes(work.dtype)})


def _perplexity_phases(shape: Shape, work: Work, c: int, activations: str) -> list[Phase]:
    """Walking the blocks over every window, then the head one batch at a time."""
    tokens = work.ppl_windows * work.ppl_seqlen
    batch_tokens = min(work.batch_size, max(work.ppl_windows, 1)) * work.ppl_seqlen
    stream, one = tokens * shape.hidden * c, batch_tokens * shape.hidden * c
    ids = {"evaluation ids": tokens * ID_BYTES}
    device = {"block": block_parameters(shape) * c,
              "forward": forward_bytes(shape, batch_tokens, c)}
    host = {"reading a block": read_bytes(work, block_parameters(shape),
                                          _largest_block_tensor(shape), c), **ids}
    _stream(device, host, "evaluation activations", stream, one, activations)
    walk = _phase("perplexity", work, device, host)
    logits = batch_tokens * shape.vocab * c + 2 * work.ppl_seqlen * shape.vocab * 4
    device = {"embeddings and head": outside_parameters(shape) * c, "logits": logits}
    host = {"reading embeddings": read_bytes(work, outside_parameters(shape),
                                             shape.vocab * shape.hidden, c), **ids}
    _stream(device, host, "evaluation activations", stream, one, activations)
    return [walk, _phase("perplexity head", work, device, host)]


def _zero_shot_phase(shape: Shape, work: Work, device_budget: int | None) -> tuple[Phase, str]:
    """The whole model for lm-eval: on the device when it fits, else offloaded."""
    weights = parameter_count(shape) * _bytes(work.dtype)
    logits = 2 * work.batch_size * ZERO_SHOT_CONTEXT * shape.vocab * 4
    device = {"model": weights, "logits": logits}
    free = None if device_budget is None else device_budget - CUDA_CONTEXT - logits
    if work.on_cpu or free is None or weights <= free or not work.offload:
        return _phase("zero-shot", work, device, {}), "whole"
    device["model"] = max(free, 0)
    return _phase("zero-shot", work, device, {"model (offloaded)": weights - device["model"]}
                  ), "offloaded"


def build(shape: Shape, work: Work, activations: str = "device", ffn_store: str = "",
          device_budget: int | None = None) -> MemoryPlan:
    """The plan of ``work`` on ``shape`` with the given paths."""
    compute = work.compute_dtype or compute_dtype_for(work.dtype, work.device, native_bf16())
    c = _bytes(compute)
    text = {"text": work.text_tokens * (TOKENIZE_BYTES + ID_BYTES),
            "calibration ids": work.tokens * ID_BYTES}
    phases = [_phase("reading the text", work, {}, text)]
    if work.converts:  # de-quantised whole in fp32, then written (measured: 1.5 x the model)
        phases.append(_phase("converting the offline model", work, {},
                             {"model (fp32)": parameter_count(shape) * 6}))
    if work.method and work.tokens:
        phases += _calibration_phases(shape, work, c, activations, ffn_store)
    elif work.method:  # magnitude: a block at a time, nothing else
        phases.append(_phase("pruning a block", work, {"block": block_parameters(shape) * c,
                                                       **method_bytes(shape, work, c)},
                             {"reading a block": read_bytes(
                                 work, block_parameters(shape), _largest_block_tensor(shape), c),
                              "writing a block": write_bytes(shape, work, c)}))
        phases.append(_writing_outside(shape, work))
    if work.ppl_windows:
        phases += _perplexity_phases(shape, work, c, activations)
    zero_shot = ""
    if work.zero_shot:
        phase, zero_shot = _zero_shot_phase(shape, work, device_budget)
        phases.append(phase)
    return MemoryPlan(tuple(phases), activations, ffn_store, zero_shot, compute, work.on_cpu)


def fits(plan: MemoryPlan, device_budget: int | None, host_budget: int | None) -> bool:
    """Whether the plan's peaks fit the budgets (None: not known, so no limit)."""
    device_ok = device_budget is None or plan.on_cpu or plan.peak_device <= device_budget
    return device_ok and (host_budget is None or plan.peak_host <= host_budget)


def plan_run(shape: Shape, work: Work, device_budget: int | None = None,
             host_budget: int | None = None) -> tuple[MemoryPlan, bool]:
    """The first plan, in order of preference (activations on the device, SparseLLM's FFN
    data on the device in fp32, then in the run's dtype, then on the host), that fits the
    budgets: (plan, True); else (the last one tried, False)."""
    stores = (["device float32", f"device {work.dtype}", "host float32"]
              if work.method == "sparsellm" else [""])
    stores = list(dict.fromkeys(stores))
    places = ["device"] if work.on_cpu else ["device", "host"]
    tried = None
    for activations in places:
        for store in stores:
            tried = build(shape, work, activations, store, device_budget)
            if fits(tried, device_budget, host_budget):
                return tried, True
    assert tried is not None
    return tried, False


def _file_tokens(source: str) -> int:
    """About how many tokens a text file gives (0 when it is not a file)."""
    try:
        return int(Path(source).expanduser().stat().st_size * TOKENS_PER_BYTE)
    except OSError:
        return 0


def eval_tokens(source: str) -> int:
    """Tokens of an evaluation text (a known source's usual size, or a file's estimate)."""
    return EVAL_TOKENS.get(source) or _file_tokens(source)


def calibration_tokens(source: str) -> int:
    """Tokens of a calibration text tokenized at once."""
    return CALIBRATION_TOKENS.get(source) or _file_tokens(source)


def eval_windows(source: str, seqlen: int, max_windows: int | None) -> int:
    """How many perplexity windows a text gives (at most ``max_windows``; C4's protocol takes
    at most 256)."""
    count = eval_tokens(source) // max(seqlen, 1) or 1
    if source == "c4":
        count = min(count, 256)
    return max(1, min(count, max_windows) if max_windows else count)


def with_dtype(work: Work, dtype: str) -> Work:
    return replace(work, dtype=dtype, compute_dtype="")
