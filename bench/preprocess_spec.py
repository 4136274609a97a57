"""The ContinuedPretrain the preprocessing benches run: one local source, the shared llama2 tokenizer, sequences
of 2,000 tokens, an unlimited budget (every document is prepared) and no decontamination."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CPT_SHARED_DATA", REPO.parent / "shared" / "data"))
TOKENIZER = SHARED / "tokenizers" / "llama2-sentencepiece"


def write_preprocess_spec(path: Path, source: Path, storage: Path, workers: int, **data: Any) -> Path:
    """Write the resource to `path` (YAML); `data` adds or replaces spec.data fields (e.g. dedup)."""
    from cpt.kube_yaml import dump

    resource = {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": path.stem},
        "spec": {
            "model": {"uri": str(TOKENIZER), "tokenizer": str(TOKENIZER)},
            "data": {
                "sources": [{"name": "stem", "uri": str(source)}],
                "sequenceLength": 2000,
                "tokenBudget": 10**12,
                "decontamination": {"enabled": False},
                "preprocessing": {"workers": workers, "limitToBudget": False},
                **data,
            },
            "training": {"microBatchSize": 1, "gradAccumulation": 1},
            "storage": {"uri": str(storage)},
        },
    }
    path.write_text(dump(resource))
    return path
