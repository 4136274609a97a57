"""`cpt compare`: a sweep's runs in one table and the frontier, from evaluation summaries the test writes."""

from __future__ import annotations

import json
from pathlib import Path

from cpt.compare import load_run, pareto, points
from cpt.kube_yaml import dump, load_all
from tests.cpt.test_cli import REPO, cpt

TINY = REPO / "manifests/examples/tiny-cpu.yaml"


def write_summary(storage: Path, tokens: int, average: float, domain: float, general: float) -> None:
    name = "baseline" if tokens == 0 else f"tokens-{tokens:013d}"
    folder = storage / "eval" / name
    folder.mkdir(parents=True)
    summary = {
        "name": name,
        "tokens": tokens,
        "scores": [{"task": "arc_easy", "score": average}],
        "average": average,
        "perplexity": {"domain": {"perplexity": domain}, "general": {"perplexity": general}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def sweep_with_results(tmp_path: Path) -> list[Path]:
    """A two-run replay sweep (0 and 0.25) of the tiny example, storage under tmp_path, with evaluations."""
    doc = load_all(TINY.read_text())[0]
    doc["spec"]["storage"]["uri"] = str(tmp_path / "runs")
    base = tmp_path / "base.yaml"
    base.write_text(dump(doc))
    result = cpt("sweep", str(base), "--set", "data.replay.fraction=0,0.25", "-o", str(tmp_path / "sweep"))
    assert result.returncode == 0, result.stderr
    no_replay, replay = tmp_path / "runs/tiny-cpu-fraction-0", tmp_path / "runs/tiny-cpu-fraction-0-25"
    for storage in (no_replay, replay):
        write_summary(storage, 0, 0.30, 20.0, 4.0)
    write_summary(no_replay, 400000, 0.31, 10.0, 5.0)  # gain 50%, forgetting 25%: beaten by replay at 1.2M
    write_summary(no_replay, 1200000, 0.32, 8.0, 6.0)  # gain 60%, forgetting 50%: the most gain
    write_summary(replay, 400000, 0.30, 12.0, 4.2)  # gain 40%, forgetting 5%: the least forgetting
    write_summary(replay, 1200000, 0.33, 10.0, 4.4)  # gain 50%, forgetting 10%
    return sorted((tmp_path / "sweep").glob("*.yaml"))


def test_frontier_marks_the_pareto_optimal_points(tmp_path: Path) -> None:
    runs = [load_run(str(f)) for f in sweep_with_results(tmp_path)]
    assert [(r.name, r.replay) for r in runs] == [("tiny-cpu-fraction-0-25", "0.25"), ("tiny-cpu-fraction-0", "0")]
    found = points(runs)
    assert len(found) == 4
    best = {(p.replay, p.tokens) for p in pareto(found)}
    assert best == {("0.25", 400000), ("0.25", 1200000), ("0", 1200000)}


def test_cli_prints_the_table_and_the_frontier(tmp_path: Path) -> None:
    files = sweep_with_results(tmp_path)
    result = cpt("compare", *map(str, files))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert " ".join(lines[0].split()) == (
        "run replay tokens arc_easy benchmarks avg domain ppl change general ppl change"
    )
    assert lines[1].split() == ["tiny-cpu-fraction-0-25", "0.25", "0", "0.3000", "0.3000", "+0.0%", "+0.0%"]
    assert lines[3].split() == ["tiny-cpu-fraction-0-25", "0.25", "1,200,000", "0.3300", "0.3300", "-50.0%", "+10.0%"]
    assert lines[5].split() == ["tiny-cpu-fraction-0", "0", "400,000", "0.3100", "0.3100", "-50.0%", "+25.0%"]
    frontier = lines[lines.index("") + 2 :]
    assert frontier[0] == (
        "* tiny-cpu-fraction-0-25  (replay 0.25, 400,000 tokens): domain ppl -40.0%, general ppl +5.0%"
    )
    assert frontier[2] == "  tiny-cpu-fraction-0  (replay 0, 400,000 tokens): domain ppl -50.0%, general ppl +25.0%"
    assert frontier[3].startswith("* tiny-cpu-fraction-0  (replay 0, 1,200,000 tokens)")


def test_storage_folders_work_and_missing_results_are_one_line(tmp_path: Path) -> None:
    sweep_with_results(tmp_path)
    result = cpt("compare", str(tmp_path / "runs/tiny-cpu-fraction-0"), str(tmp_path / "runs"))
    assert result.returncode == 1 and result.stdout == ""
    assert (
        result.stderr
        == f"cpt compare: {tmp_path / 'runs'}: no evaluation summaries (eval/*/summary.json): run the evaluate stage\n"
    )
    result = cpt("compare", str(tmp_path / "runs/tiny-cpu-fraction-0"))
    assert result.returncode == 0 and "replay ?" in result.stdout


def test_a_change_over_ten_fold_is_a_factor_not_an_unreadable_percentage(tmp_path: Path) -> None:
    """The quickstart's replay-0 run: general perplexity 2.015 -> 187,646 is '93,125x higher', not '+9312466.5%'."""
    storage = tmp_path / "run"
    write_summary(storage, 0, 0.625, 17541.6, 2.015)
    write_summary(storage, 1638400, 0.81, 1.2076, 187646.2)
    result = cpt("compare", str(storage))
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[2].split()
    assert row[-6:] == ["0.8100", "0.8100", "14,526x", "lower", "93,125x", "higher"]


def test_the_frontier_is_drawn_one_labelled_point_per_run_and_milestone(tmp_path: Path) -> None:
    files = sweep_with_results(tmp_path)
    result = cpt("compare", *map(str, files), "--plot", str(tmp_path / "frontier.svg"))
    assert result.returncode == 0, result.stderr
    svg = (tmp_path / "frontier.svg").read_text()
    labels = ["replay 0, 400K", "replay 0, 1.2M", "replay 0.25, 400K", "replay 0.25, 1.2M", "Pareto frontier"]
    assert all(f">{label}<" in svg for label in labels), [label for label in labels if f">{label}<" not in svg]
    result = cpt("compare", *map(str, files), "--plot", str(tmp_path / "frontier.png"))
    assert result.returncode == 0 and (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = cpt("compare", *map(str, files), "--plot", str(tmp_path / "frontier.txt"))
    assert (result.returncode, result.stderr) == (
        1,
        f"cpt compare: --plot {tmp_path / 'frontier.txt'}: the file must end in .png, .svg, .pdf\n",
    )
