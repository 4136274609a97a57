"""Shards match the spec that trains on them: a model swap or an edited filter in the same storage is refused
by the preprocessing stages (exit 4, naming what changed), by training's data check, and by a resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpt.exit_codes import EXIT_BAD_INPUT
from cpt_pipeline.__main__ import main
from cpt_pipeline.preprocess.identity import PreparedUnderAnotherSpec
from cpt_pipeline.preprocess.runner import prepare, reduce
from cpt_pipeline.storage import Storage
from cpt_pipeline.train.data import DataError
from cpt_pipeline.train.resume import ResumeMismatch, check_resume, resume_plan
from cpt_pipeline.train.shard_check import check_data
from tests.pipeline.preprocess.helpers import document, local_tokenizer, make_spec, write_jsonl
from tests.pipeline.preprocess.test_pipeline import run, write_resource

DOCS = [document(i) for i in range(60)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two tokenizers built here: a 300-token and a 600-token vocabulary (a model swap)."""
    root = tmp_path_factory.mktemp("tokenizers")
    return local_tokenizer(root / "small", 300, DOCS), local_tokenizer(root / "large", 600, DOCS)


def prepared(tmp_path: Path, model: str, storage: str = "out", **data) -> tuple:
    write_jsonl(tmp_path / "in" / "d.jsonl", DOCS)
    spec = make_spec(tmp_path / storage, [{"name": "d", "uri": str(tmp_path / "in")}], model=model, **data)
    run(spec, world=2)
    return spec, Storage.from_spec(spec.storage)


def test_a_model_swap_in_the_same_storage_is_refused_with_one_line(
    tmp_path: Path, tokenizers: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    small, large = tokenizers
    _, storage = prepared(tmp_path, small)
    before = storage.read_json("data", "domain", "manifest.json")
    swapped = make_spec(tmp_path / "out", [{"name": "d", "uri": str(tmp_path / "in")}], model=large)
    resource = write_resource(swapped, tmp_path / "swapped.yaml")
    for argv in (["preprocess", "--rank", "0"], ["dedup"]):
        capsys.readouterr()
        assert main([*argv, "--spec", str(resource), "--world-size", "2"]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "was prepared under a different spec: tokenizer fingerprint" in err
        assert "use a new spec.storage.uri" in err
    assert storage.read_json("data", "domain", "manifest.json") == before  # the old shards are not re-used


def test_an_edited_filter_is_refused_naming_the_field(tmp_path: Path, tokenizers: tuple[str, str]) -> None:
    spec, storage = prepared(tmp_path, tokenizers[0])
    edited = make_spec(spec.storage.uri, [{"name": "d", "uri": str(tmp_path / "in")}], model=tokenizers[0])
    edited.data.filters.min_lines = 5
    changed = r"was prepared under a different spec: spec\.data\.filters\.minLines was 3, is 5\."
    for stage in (lambda: prepare(edited, storage, 0, 2), lambda: reduce(edited, storage, 2)):
        with pytest.raises(PreparedUnderAnotherSpec, match=r"data/domain/manifest\.json " + changed):
            stage()
    storage.remove("data", "domain", "manifest.json")  # not packed yet: the workers' outputs are checked
    for stage in (lambda: prepare(edited, storage, 1, 2), lambda: reduce(edited, storage, 2)):
        with pytest.raises(PreparedUnderAnotherSpec, match=r"rank-0000[01]/done\.json " + changed):
            stage()
    assert reduce(spec, storage, 2)["docsKept"] == 60  # the spec it was made under still finds it


def test_training_checks_the_shards_against_the_models_tokenizer_and_eos(
    tmp_path: Path, tokenizers: tuple[str, str]
) -> None:
    small, large = tokenizers
    spec, storage = prepared(tmp_path, small)
    manifests = {"domain": storage.read_json("data", "domain", "manifest.json")}
    check_data(manifests, spec, model_vocab=300, model_eos=2)
    swapped = make_spec(spec.storage.uri, [{"name": "d", "uri": str(tmp_path / "in")}], model=large)
    with pytest.raises(DataError, match=r"tokenized with another tokenizer .*fingerprint"):
        check_data(manifests, swapped, model_vocab=600, model_eos=2)
    with pytest.raises(DataError, match=r"EOS id 2 .* the model's EOS id is 0"):
        check_data(manifests, spec, model_vocab=300, model_eos=0)


def test_a_resume_over_shards_made_again_differently_is_refused(tmp_path: Path, tokenizers: tuple[str, str]) -> None:
    spec, storage = prepared(tmp_path, tokenizers[0])
    _, again = prepared(tmp_path, tokenizers[0], storage="again", filters={"minLines": 5})
    first = {"domain": storage.read_json("data", "domain", "manifest.json")}
    remade = {"domain": again.read_json("data", "domain", "manifest.json")}
    recorded = resume_plan(spec, 2, [10], 0, first)
    check_resume(recorded, resume_plan(spec, 2, [10], 0, first), "step-5")
    with pytest.raises(ResumeMismatch, match=r"shards \(data/<set>/manifest\.json\) was \{'domain'"):
        check_resume(recorded, resume_plan(spec, 2, [10], 0, remade), "step-5")
