"""Generated documents and specs for preprocessing tests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from cpt.api import ContinuedPretrain, ContinuedPretrainSpec
from tests.conftest import shared_data_dir

_VOCABULARY = (
    "atom cell energy force mass wave light heat orbit planet star acid base salt ion bond gene blood heart lung "
    "brain nerve bone muscle enzyme protein membrane field charge current voltage circuit magnet pressure volume "
    "density motion speed velocity gravity friction momentum"
)
WORDS = _VOCABULARY.split()


def document(seed: int, lines: int = 6, words_per_line: int = 12) -> str:
    """A unique, non-repetitive multi-line document."""
    rng = random.Random(seed)
    return "\n".join(
        " ".join(rng.choice(WORDS) for _ in range(words_per_line)).capitalize() + f" ({seed}.{i})."
        for i in range(lines)
    )


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": i, field: text}) + "\n")
    return path


def stories_tokenizer() -> str:
    return str(shared_data_dir() / "models" / "stories260K")


def make_spec(
    storage: Path | str,
    sources: list[dict[str, Any]],
    evaluation: dict[str, Any] | None = None,
    model: str | None = None,
    **data: Any,
) -> ContinuedPretrainSpec:
    """A spec over the given sources with the stories260K tokenizer (vocab 512, fast), or the model at `model`."""
    data_section = {"sources": sources, "sequenceLength": 64, "tokenBudget": 10**9, **data}
    data_section.setdefault("decontamination", {"enabled": False})
    data_section.setdefault("preprocessing", {"limitToBudget": False})
    doc = {
        "spec": {
            "model": {"uri": model or stories_tokenizer()},
            "data": data_section,
            "training": {"microBatchSize": 1, "gradAccumulation": 1},
            "storage": {"uri": str(storage)},
            **({"evaluation": evaluation} if evaluation else {}),
        }
    }
    return ContinuedPretrain.model_validate(doc).spec


def local_tokenizer(directory: Path, vocab_size: int, texts: list[str]) -> str:
    """A byte-level BPE tokenizer trained here on texts (tokenizer.json + tokenizer_config.json, EOS `</s>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    return str(directory)
