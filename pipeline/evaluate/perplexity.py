"""Perplexity on held-out text: the domain gain and, on general text, the forgetting signal.

Documents are tokenized with the tokenizer training's shards were made with (`hf_loading.load_tokenizer`),
each one on its own, after a document-start token: BOS when the tokenizer adds it, else EOS (what precedes
every document in the packed training rows, `hf_loading.document_start`). So every token of a document,
its first included, is predicted, and the bits-per-byte denominator (all the document's bytes) matches the
tokens scored. Each document is cut into windows of `window` tokens
(default: the training sequence length, capped by the model's context; a 128k-context model is not scored
in 128k windows), without overlap, and windows go through the model `batch_size` at a time. The result
counts every predicted token once and reports per-token perplexity exp(NLL / tokens) and bits per UTF-8
byte, NLL / (bytes x ln 2). The latter is comparable across tokenizers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import fsspec

from cpt.api.evaluation import TextSet
from cpt_pipeline import jsonl
from cpt_pipeline.hf_loading import document_start, load_causal_lm, load_tokenizer
from cpt_pipeline.storage import naming_the_object, storage_options
from cpt_pipeline.train.chunked_loss import IGNORE_INDEX, summed_cross_entropy, supports_chunked_loss


def read_texts(text_set: TextSet) -> list[str]:
    """Up to maxDocuments texts from jsonl/parquet files, or from .txt files (one document per file)."""
    fs, _, paths = fsspec.get_fs_token_paths(text_set.uri, storage_options=storage_options(text_set.uri))
    with naming_the_object("listing", text_set.uri):
        files = sorted(p for path in paths for p in (fs.find(path) if fs.isdir(path) else [path]))
    if not files:
        raise FileNotFoundError(f"perplexity set {text_set.uri!r}: no files")
    texts: list[str] = []
    for path in files:
        with naming_the_object("reading", fs.unstrip_protocol(path)), fs.open(path, "rb") as handle:
            data = handle.read()
        if path.endswith(".parquet"):
            import io

            import pyarrow.parquet as pq

            texts += [
                t for t in pq.read_table(io.BytesIO(data), columns=[text_set.text_field]).column(0).to_pylist() if t
            ]
        elif path.endswith((".jsonl", ".json")):
            for record in jsonl.records(data):
                value = record.get(text_set.text_field)
                if isinstance(value, str) and value.strip():
                    texts.append(value)
        else:
            texts.append(data.decode("utf-8"))
        if len(texts) >= text_set.max_documents:
            break
    return texts[: text_set.max_documents]


def scoring_window(model_context: int | None, requested: int | None) -> int:
    """Tokens per scored window: the requested length, capped by the model's context (at least 2)."""
    context = int(model_context or 2048)
    return max(2, min(context, requested or context))


def perplexity(
    model: Any, tokenizer: Any, texts: list[str], device: str = "cpu", batch_size: int = 8, window: int | None = None
) -> dict[str, Any]:
    """{"perplexity", "bits_per_byte", "tokens", "bytes", "documents", "nll"} of texts under model."""
    import torch

    window = scoring_window(getattr(model.config, "max_position_embeddings", None), window)
    start = document_start(tokenizer)
    pieces: list[list[int]] = []
    for text in texts:
        ids = [start, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        pieces += [ids[i : i + window] for i in range(0, max(1, len(ids) - 1), window - 1)]
    pieces = [p for p in pieces if len(p) > 1]
    nll, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, piece in enumerate(batch):
                ids[row, : len(piece)] = torch.tensor(piece)
                mask[row, : len(piece)] = 1
            batch_nll, batch_tokens = _scored(model, ids.to(device), mask.to(device))
            nll += batch_nll
            tokens += batch_tokens
    size = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
        "bits_per_byte": nll / (size * math.log(2)) if size else float("nan"),
        "tokens": tokens,
        "bytes": size,
        "documents": len(texts),
        "nll": nll,
    }


def _scored(model: Any, ids: Any, mask: Any) -> tuple[float, int]:
    """(summed NLL, tokens scored) of a padded batch of windows: through the chunked cross-entropy of training
    (one chunk of logits at a time), or the model's full logits when its head is not a plain linear one."""
    import torch

    valid = mask[:, 1:].bool()
    if supports_chunked_loss(model):
        hidden = model.base_model(input_ids=ids, attention_mask=mask)[0]
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        return float(summed_cross_entropy(hidden, model.get_output_embeddings(), labels)), int(valid.sum())
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1], dim=-1)
    picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return -float(picked[valid].sum()), int(valid.sum())


def batch_size_for(setting: str, device: str) -> int:
    """evaluation.batchSize as windows per forward pass: an integer as given; "auto" is 8 on CPU, 32 on GPU."""
    if setting != "auto":
        return int(setting)
    return 32 if device == "cuda" else 8


def evaluate_sets(
    model_dir: str | Path,
    sets: dict[str, TextSet],
    device: str | None = None,
    batch_size: str = "auto",
    window: int | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Perplexity of each named text set under the model in model_dir (with tokenizer, else the model's own)."""
    if not sets:
        return {}
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = Path(model_dir)
    model = load_causal_lm(model_dir, trust_remote_code, str(model_dir), dtype=torch.float32).to(device)
    tokenizer = tokenizer or load_tokenizer(model_dir, trust_remote_code)
    size = batch_size_for(batch_size, device)
    return {
        name: perplexity(model, tokenizer, read_texts(text_set), device, size, window)
        for name, text_set in sets.items()
    }
