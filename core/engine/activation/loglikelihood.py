"""Causal CoreInfer scores for loglikelihood tasks (multiple choice): context pre-fill, then decode.

lm-eval scores ``(context, continuation)`` with one forward over both: a pre-fill, so a CoreInfer
model answers it densely (see :mod:`core.activation.coreinfer`).  Here the context is pre-filled
(dense, selects the core neurons) and the continuation is scored as a cached forward (sparse), the
computation generating that continuation would do.  The first continuation token's log-probability
comes from the pre-fill, as the first generated token does.

:func:`coreinfer_lm` builds an lm-eval ``HFLM`` whose loglikelihood requests go through
:func:`split_loglikelihood` one request at a time (no batching, no logits cache); generation
requests use ``HFLM``'s own ``generate`` path, which CoreInfer already handles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def split_loglikelihood(model: nn.Module, context: Sequence[int],
                        continuation: Sequence[int]) -> tuple[float, bool]:
    """``(sum of log p(continuation | context), continuation is the greedy one)``."""
    if len(context) == 0 or len(continuation) == 0:
        raise ValueError("context and continuation must both hold at least one token")
    device = next(model.parameters()).device
    ctx = torch.tensor([list(context)], dtype=torch.long, device=device)
    cont = torch.tensor([list(continuation)], dtype=torch.long, device=device)
    out = model(input_ids=ctx, use_cache=True)
    logits = [out.logits[:, -1:, :]]
    if cont.shape[1] > 1:
        step = model(input_ids=cont[:, :-1], past_key_values=out.past_key_values, use_cache=True)
        logits.append(step.logits)
    logprobs = F.log_softmax(torch.cat(logits, dim=1).float(), dim=-1)
    picked = logprobs.gather(-1, cont.unsqueeze(-1)).squeeze(-1)
    greedy = bool((logprobs.argmax(-1) == cont).all())
    return float(picked.sum()), greedy


def coreinfer_lm(model: nn.Module, tokenizer: Any, **hflm_kwargs: Any) -> Any:
    """An lm-eval ``HFLM`` on ``model`` (converted with ``apply_coreinfer``) that scores
    loglikelihood requests causally with :func:`split_loglikelihood`."""
    from lm_eval.models.huggingface import HFLM

    class CoreInferHFLM(HFLM):
        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> list[tuple[float, bool]]:
            results = []
            for key, context_enc, continuation_enc in requests:
                whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
                n_ctx = len(whole) - len(continuation_enc)
                answer = split_loglikelihood(self.model, whole[:n_ctx], whole[n_ctx:])
                results.append(answer)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            return results

    return CoreInferHFLM(pretrained=model, tokenizer=tokenizer, **hflm_kwargs)
