"""The report from a fixture run (the reference study's Table 1 as result JSONs, plus a loss curve)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cpt_pipeline.report.report import build_report, token_label
from cpt_pipeline.storage import Storage

TASKS = ["mmlu", "arc_challenge", "arc_easy", "winogrande", "hellaswag", "boolq", "piqa"]
PAPER = {  # arXiv 2504.09687, Table 1
    0: [0.2304, 0.2432, 0.4146, 0.5241, 0.3816, 0.6034, 0.6513],
    400_000_000: [0.2364, 0.2568, 0.4398, 0.5114, 0.3989, 0.5804, 0.6518],
    1_000_000_000: [0.2490, 0.2543, 0.4402, 0.5083, 0.4105, 0.5719, 0.6496],
}


@pytest.fixture
def run(tmp_path: Path) -> Storage:
    storage = Storage.open_uri(str(tmp_path / "run"))
    for tokens, values in PAPER.items():
        name = "baseline" if tokens == 0 else f"tokens-{tokens:013d}"
        scores = [{"task": t, "metric": "acc", "score": v, "stderr": 0.01} for t, v in zip(TASKS, values, strict=True)]
        storage.write_json(
            {
                "name": name,
                "tokens": tokens,
                "model": "m",
                "scores": scores,
                "average": sum(values) / len(values),
                "perplexity": {
                    "domain": {"perplexity": 30.0 - tokens / 1e8},
                    "general": {"perplexity": 20.0 + tokens / 5e8},
                },
            },
            "eval",
            name,
            "summary.json",
        )
    steps = np.arange(1, 501)
    history = [
        {
            "step": int(s),
            "tokens": int(s) * 2_000_000,
            "loss": 3.2 + 0.6 * math.exp(-s / 80) + 0.02 * math.sin(s),
            "lr": 1e-4,
        }
        for s in steps
    ]
    storage.write_text("".join(json.dumps(r) + "\n" for r in history), "train", "metrics.jsonl")
    return storage


def test_table_matches_the_result_jsons(run: Storage) -> None:
    build_report(run)
    lines = (Path(run.root) / "report" / "table.md").read_text().splitlines()
    assert lines[0] == "| CPT Tokens | MMLU | ARC Ch. | ARC Easy | Winogr. | H.Swag | BoolQ | PIQA | Avg |"
    rows = [line.strip("| ").split(" | ") for line in lines[2:]]
    assert [r[0] for r in rows] == ["0 (Base)", "≈ 400M", "≈ 1B"]
    for row, (tokens, values) in zip(rows, PAPER.items(), strict=True):
        summary = run.read_json("eval", "baseline" if tokens == 0 else f"tokens-{tokens:013d}", "summary.json")
        assert [float(c) for c in row[1:8]] == [round(s["score"], 4) for s in summary["scores"]] == values
        assert float(row[8]) == round(summary["average"], 4)
    assert [r[8] for r in rows] == ["0.4355", "0.4394", "0.4405"]  # the paper's Avg column


def test_figures_exist_are_real_images_and_the_page_is_self_contained(run: Storage) -> None:
    import matplotlib.image

    result = build_report(run)
    out = Path(run.root) / "report"
    assert result["figures"] == ["efficiency.png", "forgetting.png", "loss.png"]
    for name in result["figures"]:
        image = matplotlib.image.imread(out / name)
        assert (out / name).stat().st_size > 20_000 and image.shape[0] > 400 and image.shape[1] > 700
        assert image[..., :3].std() > 0.05  # not a blank canvas
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<td>0.4355</td>" in page and 'src="http' not in page
    assert "![Token efficiency](efficiency.png)" in (out / "report.md").read_text()


def test_the_cli_renders_a_report_from_a_storage_uri(run: Storage) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "report", run.root], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["reportUri"].endswith("report/index.html")


def test_a_run_without_results_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "report", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "no evaluation results under" in result.stderr


@pytest.mark.parametrize(
    ("tokens", "label"),
    [(0, "0 (Base)"), (400_000_000, "≈ 400M"), (1_000_000_000, "≈ 1B"), (5120, "≈ 5.12K"), (999, "999")],
)
def test_token_labels(tokens: int, label: str) -> None:
    assert token_label(tokens) == label


def test_table_1_changes_are_the_ones_the_study_prints(run: Storage) -> None:
    """Section 4.1: MMLU +8.1%, ARC Easy +6.2%, HellaSwag +7.6%, Winogrande -3.0%, BoolQ -5.2% at 1B tokens."""
    build_report(run)
    page = (Path(run.root) / "report" / "report.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| ≈ 1B"))
    cells = row.strip("| ").split(" | ")
    assert cells[1:8] == [
        "0.2490 (+8.1%)",
        "0.2543 (+4.6%)",
        "0.4402 (+6.2%)",
        "0.5083 (-3.0%)",
        "0.4105 (+7.6%)",
        "0.5719 (-5.2%)",
        "0.6496 (-0.3%)",
    ]
