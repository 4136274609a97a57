"""The causal-LM loss without the full-vocabulary logits of the whole micro-batch.

`model(input_ids, labels=input_ids).loss` computes logits for every token (micro-batch x sequence x vocab) and
upcasts them to fp32: for MobileLLM-125M at 80 x 2000 tokens and a 32k vocabulary that is 20 GB, plus as
much again for their gradient, more than the model, its optimizer and its activations together. Here the
last hidden state goes through the LM head a chunk of tokens at a time, each chunk's logits are reduced to a
summed cross-entropy at once and recomputed in the backward pass (activation checkpointing of the chunk), so
at most one chunk of logits (`chunk_tokens`, ~256 MiB of fp32 logits) lives at any time. The result is the
same mean over the shifted labels as Hugging Face's `ForCausalLMLoss` (within float rounding), and so are
the gradients. On CUDA, Liger's fused linear cross-entropy kernel is used instead when `liger_kernel` is
installed and the head's weight is whole on the device (not partitioned by ZeRO-3).

The model's forward is replaced on the instance (not the class, and not its weights or config: checkpoints
and exports are unchanged) by one that computes this loss when labels are given; a model whose logits are
not a plain linear head over its base model's last hidden state (soft-capped or scaled logits) keeps its own.
"""

from __future__ import annotations

import logging
import types
from typing import Any

from cpt.memory import chunk_tokens

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
_MARK = "_cpt_chunked_loss"


def summed_cross_entropy(hidden: Any, head: Any, labels: Any, chunk: int | None = None) -> Any:
    """Summed fp32 cross-entropy of head(hidden) against labels shifted left by one (-100 ignored), one chunk
    of tokens at a time; with gradients enabled each chunk is recomputed in the backward pass.

    hidden: (batch, seq, dim); head: the LM head module (called per chunk, so ZeRO-3 gathers its weight);
    labels: (batch, seq)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    flat = hidden.reshape(-1, hidden.shape[-1])
    step = chunk or chunk_tokens(head.out_features)

    def summed(part: Any, target: Any) -> Any:
        return F.cross_entropy(head(part).float(), target, ignore_index=IGNORE_INDEX, reduction="sum")

    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, flat.shape[0], step):
        part, target = flat[start : start + step], targets[start : start + step]
        if torch.is_grad_enabled():
            total = total + checkpoint(summed, part, target, use_reentrant=False)
        else:
            total = total + summed(part, target)
    return total


def chunked_cross_entropy(hidden: Any, head: Any, labels: Any, chunk: int | None = None) -> Any:
    """The mean of summed_cross_entropy over the labels that count (Hugging Face's ForCausalLMLoss)."""
    counted = (labels[..., 1:] != IGNORE_INDEX).sum()
    return summed_cross_entropy(hidden, head, labels, chunk) / counted


def fused_kernel(head: Any, device_type: str) -> Any | None:
    """Liger's fused linear cross-entropy on CUDA when installed and the head's weight is whole, else None."""
    if device_type != "cuda" or hasattr(head.weight, "ds_id"):  # ds_id: a ZeRO-3 partitioned parameter
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX)


def supports_chunked_loss(model: Any) -> bool:
    """A causal LM whose logits are a plain linear head over its base model's last hidden state (anything else,
    e.g. a wrapper that is only callable, is scored through its own forward)."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    scaled = any(getattr(model.config, name, None) not in (None, 1, 1.0) for name in _SCALED_LOGITS)
    return isinstance(head, torch.nn.Linear) and getattr(model, "base_model", model) is not model and not scaled


def use_chunked_loss(model: Any) -> bool:
    """Replace `model.forward` (this instance) by one computing the loss chunked when labels are given;
    False (and the model untouched) when the model is not supported."""
    if getattr(model, _MARK, False):
        return True
    if not supports_chunked_loss(model):
        log.info("%s: the loss keeps the model's own forward (full logits)", type(model).__name__)
        return False
    original = model.forward

    def forward(self: Any, input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        if labels is None or kwargs.get("inputs_embeds") is not None:
            return original(input_ids=input_ids, labels=labels, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        hidden = self.base_model(input_ids=input_ids, **kwargs)[0]
        head = self.get_output_embeddings()
        fused = fused_kernel(head, hidden.device.type)
        if fused is not None:
            targets = labels[..., 1:].reshape(-1)
            loss = fused(head.weight, hidden[:, :-1].reshape(-1, hidden.shape[-1]), targets, head.bias)
        else:
            loss = chunked_cross_entropy(hidden, head, labels)
        return CausalLMOutputWithPast(loss=loss)

    model.forward = types.MethodType(forward, model)
    setattr(model, _MARK, True)
    return True


def causal_lm_loss(engine: Any, input_ids: Any) -> Any:
    """The training loss of one micro-batch through the engine (its forward hooks and loss scaling intact):
    `engine(input_ids, labels=input_ids).loss`, computed chunked where the model allows."""
    use_chunked_loss(engine.module)
    return engine(input_ids=input_ids, labels=input_ids).loss
