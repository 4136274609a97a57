"""Perplexity scores in chunks (training's chunked cross-entropy): the LM head never sees more than one chunk
of tokens, and the figures equal those of the full-logits scoring it replaces."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cpt import memory
from cpt_pipeline.evaluate.perplexity import document_start, perplexity

CHUNK = 16


@pytest.fixture
def model_and_tokenizer(shared_data: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared_data / "models" / "stories260K"
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


@pytest.fixture
def texts(shared_data: Path) -> list[str]:
    lines = (shared_data / "corpora" / "stories260k_samples.jsonl").read_text().split("\n")[:12]
    return [json.loads(line)["text"][: 40 + 60 * i] for i, line in enumerate(lines)]  # uneven: padded windows


def full_logits_nll(model: Any, tokenizer: Any, texts: list[str], batch_size: int, window: int) -> tuple[float, int]:
    """Today's scoring: every window's full fp32 logits and their log-softmax."""
    start = document_start(tokenizer)
    pieces = []
    for text in texts:
        ids = [start, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        pieces += [ids[i : i + window] for i in range(0, max(1, len(ids) - 1), window - 1)]
    pieces = [p for p in pieces if len(p) > 1]
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(pieces), batch_size):
            batch = pieces[first : first + batch_size]
            ids = torch.zeros(len(batch), max(map(len, batch)), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, piece in enumerate(batch):
                ids[row, : len(piece)], mask[row, : len(piece)] = torch.tensor(piece), 1
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1], dim=-1)
            picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            valid = mask[:, 1:].bool()
            nll -= float(picked[valid].sum())
            tokens += int(valid.sum())
    return nll, tokens


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch, model_and_tokenizer: tuple[Any, Any]) -> list[int]:
    """CHUNK-token chunks; returns the number of tokens of every LM-head call."""
    model, _ = model_and_tokenizer
    monkeypatch.setattr(memory, "LOGITS_CHUNK_BYTES", 4 * model.config.vocab_size * CHUNK)
    rows: list[int] = []
    model.lm_head.register_forward_hook(
        lambda _m, args, _out: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    return rows


def test_the_head_sees_one_chunk_of_tokens_at_a_time(model_and_tokenizer, texts, small_chunks) -> None:
    model, tokenizer = model_and_tokenizer
    perplexity(model, tokenizer, texts, batch_size=4, window=48)
    assert len(small_chunks) > 10 and max(small_chunks) <= CHUNK, small_chunks


@pytest.mark.parametrize(("batch_size", "window"), [(4, 48), (3, 512)])
def test_the_figures_equal_full_logits_scoring(model_and_tokenizer, texts, small_chunks, batch_size, window) -> None:
    model, tokenizer = model_and_tokenizer
    got = perplexity(model, tokenizer, texts, batch_size=batch_size, window=window)
    nll, tokens = full_logits_nll(model, tokenizer, texts, batch_size, window)
    assert got["tokens"] == tokens and tokens > 500
    assert got["nll"] == pytest.approx(nll, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
