"""The chunked loss equals the model's own loss (Hugging Face's ForCausalLMLoss over full logits) and so do the
gradients, on CPU in fp32; a model with scaled logits keeps its own forward."""

from __future__ import annotations

import copy

import pytest
import torch

from cpt import memory
from cpt.api.model import Architecture
from cpt.memory import chunk_tokens
from cpt_pipeline.train.chunked_loss import (
    chunked_cross_entropy,
    fused_kernel,
    supports_chunked_loss,
    use_chunked_loss,
)
from cpt_pipeline.train.model import llama_config


def tiny(tied: bool = True, **sizes: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    arch = Architecture(preset="tiny", tieEmbeddings=tied, **sizes)
    return AutoModelForCausalLM.from_config(llama_config(arch)).float()


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
def test_loss_and_gradients_equal_the_full_logits_loss(tied: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "LOGITS_CHUNK_BYTES", 4 * 512 * 10)  # 10 tokens a chunk: 12 chunks
    model = tiny(tied)
    chunked = copy.deepcopy(model)
    assert use_chunked_loss(chunked)
    ids = torch.randint(0, 512, (3, 37), generator=torch.Generator().manual_seed(1))
    expected = model(input_ids=ids, labels=ids)
    got = chunked(input_ids=ids, labels=ids)
    assert got.logits is None and expected.logits.shape == (3, 37, 512)  # no full logits on the chunked side
    assert abs(float(got.loss.detach()) - float(expected.loss.detach())) < 1e-5
    expected.loss.backward()
    got.loss.backward()
    want, have = grads(model), grads(chunked)
    assert want.keys() == have.keys() and len(want) > 5
    for name in want:
        torch.testing.assert_close(have[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_any_chunk_size_and_ignored_labels_give_the_same_mean(chunk: int) -> None:
    from transformers.loss.loss_utils import ForCausalLMLoss

    torch.manual_seed(2)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 33, 16)
    labels = torch.randint(0, 50, (2, 33))
    labels[0, :5] = -100
    expected = ForCausalLMLoss(head(hidden), labels, vocab_size=50)
    assert abs(float(chunked_cross_entropy(hidden, head, labels, chunk)) - float(expected)) < 1e-5


def test_without_labels_the_model_forward_is_its_own() -> None:
    model = tiny()
    use_chunked_loss(model)
    ids = torch.randint(0, 512, (1, 9))
    assert model(input_ids=ids).logits.shape == (1, 9, 512)


def test_scaled_logits_keep_the_model_forward() -> None:
    model = tiny()
    model.config.final_logit_softcapping = 30.0
    assert not supports_chunked_loss(model) and not use_chunked_loss(model)
    assert "forward" not in vars(model)


def test_chunks_hold_about_256_mib_of_fp32_logits_and_the_fused_kernel_is_cuda_only() -> None:
    assert chunk_tokens(32000) == 2097 and chunk_tokens(152064) == 441 and chunk_tokens(10**9) == 1
    assert fused_kernel(torch.nn.Linear(4, 8), "cpu") is None
