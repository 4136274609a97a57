"""A model with modeling code of its own (as facebook/MobileLLM-125M ships it) goes through every stage with
spec.model.trustRemoteCode, and stops with one line naming that field without it.

The model is local (tests/pipeline/mobilellm_like.py): config.json maps AutoModelForCausalLM to a Llama subclass
in a file beside it, under a model_type transformers does not know; its tokenizer is only `tokenizer.model` with
a config naming no special tokens, so BOS and EOS come from the SentencePiece model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cpt.kube_yaml import dump
from cpt_pipeline.local import run_preprocessing
from tests.conftest import shared_data_dir
from tests.pipeline.mobilellm_like import spaced_documents, write_model

REPO = Path(__file__).resolve().parents[2]
STEPS = 4  # 1 process x 2 rows x 32 tokens per step


def resource(model: Path, corpus: Path, storage: Path, trust: bool) -> dict[str, Any]:
    shared = shared_data_dir()
    return {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": "own-code"},
        "spec": {
            "model": {"uri": str(model), "trustRemoteCode": trust},
            "data": {
                "sources": [{"name": "spaced", "uri": str(corpus)}],
                "sequenceLength": 32,
                "tokenBudget": 64 * STEPS,
                "decontamination": {"enabled": False},
                "preprocessing": {"workers": 1},
            },
            "training": {
                "procsPerNode": 1,
                "microBatchSize": 2,
                "gradAccumulation": 1,
                "deepspeed": {"zeroStage": 0, "precision": "fp32", "gradientCheckpointing": False},
                "optimizer": {"lr": "1e-3"},
            },
            "evaluation": {
                "localTaskDir": str(shared / "benchmarks"),
                "tasks": [{"name": "arc_easy", "metric": "acc_norm", "limit": 4}],
                "perplexity": {"general": {"uri": str(corpus), "maxDocuments": 3}},
            },
            "storage": {"uri": str(storage)},
        },
    }


def stage(name: str, spec: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "cpt_pipeline", name, "--spec", str(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        env={**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", **env},
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model, a corpus with runs of spaces and newlines, and a private cache for the model's code."""
    root = tmp_path_factory.mktemp("own-code")
    model = write_model(root / "model", own_code=True)
    corpus = root / "spaced.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in spaced_documents()))
    env = {"HF_MODULES_CACHE": str(root / "modules")}
    return {"root": root, "model": model, "corpus": corpus, "env": env}


def write_spec(setup: dict[str, Any], name: str, trust: bool) -> Path:
    path = setup["root"] / f"{name}.yaml"
    path.write_text(dump(resource(setup["model"], setup["corpus"], setup["root"] / name, trust)))
    return path


def test_with_trust_it_preprocesses_trains_exports_and_evaluates(setup: dict[str, Any]) -> None:
    spec = write_spec(setup, "trusted", trust=True)
    run_preprocessing(spec, 1, cwd=REPO, env=setup["env"])
    out = setup["root"] / "trusted"
    manifest = json.loads((out / "data" / "domain" / "manifest.json").read_text())
    assert (manifest["tokenizer"]["eos_id"], manifest["tokenizer"]["bos_id"]) == (2, 1)  # </s>, <s> of tokenizer.model
    trained = stage("train", spec, setup["env"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    export = out / "exports" / "tokens-0000000000256"
    assert {"configuration_kubecpt.py", "modeling_kubecpt.py"} <= set(os.listdir(export))  # its code travels with it
    # the export reloads in a fresh process (another module cache) as the model's own class
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from transformers import AutoModelForCausalLM; "
            "print(type(AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)).__name__)",
            str(export),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(setup["root"] / "fresh-modules")},
    )
    assert probe.stdout.strip() == "KubecptForCausalLM", probe.stderr[-2000:]
    evaluated = stage("evaluate", spec, setup["env"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    status = json.loads((out / "eval" / "status.json").read_text())
    assert [m["tokens"] for m in status["milestones"]] == [0, 256]
    for milestone in status["milestones"]:
        assert milestone["generalPerplexity"] > 1 and milestone["scores"][0]["task"] == "arc_easy"


def test_without_trust_training_and_evaluation_stop_with_one_line_naming_the_field(setup: dict[str, Any]) -> None:
    spec = write_spec(setup, "untrusted", trust=False)
    run_preprocessing(spec, 1, cwd=REPO, env=setup["env"])  # its tokenizer has no code of its own
    for name in ("train", "evaluate"):
        result = stage(name, spec, setup["env"])
        lines = [line for line in result.stderr.splitlines() if "trustRemoteCode" in line]
        assert result.returncode == 4, result.stderr[-3000:]
        assert len(lines) == 1 and "spec.model.trustRemoteCode: true" in lines[0], result.stderr[-3000:]
        assert "modeling_kubecpt.py" in lines[0] and "Traceback" not in result.stderr


def test_bos_and_eos_come_from_the_sentencepiece_model_when_the_config_names_none(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from cpt_pipeline.hf_loading import load_tokenizer
    from cpt_pipeline.preprocess.tokenize import TokenizerError
    from tests.pipeline.mobilellm_like import TOKENIZER_CONFIG, sentencepiece_model

    (tmp_path / "sp").mkdir()
    shutil.copy(sentencepiece_model(), tmp_path / "sp" / "tokenizer.model")
    (tmp_path / "sp" / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))  # "" for every token
    for sentencepiece in (False, True):
        tokenizer = load_tokenizer(tmp_path / "sp", sentencepiece=sentencepiece)
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
            "<s>",
            "</s>",
            1,
            2,
        )
    (tmp_path / "none").mkdir()  # no EOS named, none in the vocabulary, no SentencePiece model
    Tokenizer(WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>")).save(str(tmp_path / "none" / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="names no eos_token"):
        load_tokenizer(tmp_path / "none")


def test_the_paper_example_allows_mobilellm_code() -> None:
    import yaml

    from cpt.api import ContinuedPretrain

    doc = yaml.safe_load((REPO / "manifests" / "examples" / "paper-mobilellm-fineweb-edu.yaml").read_text())
    model = ContinuedPretrain.model_validate(doc).spec.model
    assert (model.uri, model.trust_remote_code) == ("facebook/MobileLLM-125M", True)
