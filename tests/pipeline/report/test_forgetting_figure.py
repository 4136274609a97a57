"""The report shows what the study shows: forgetting visible next to a huge domain gain, error bars from lm-eval's
stderr, Table 1 with changes against the base as the study prints them, and the guardrail, recommended export
and budget segments marked when the run has them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest

from cpt_pipeline.evaluate.results import load_summaries
from cpt_pipeline.report.figures import efficiency_figure, forgetting_figure, loss_figure
from cpt_pipeline.report.marks import Marks, marks_from
from cpt_pipeline.report.report import build_report
from cpt_pipeline.storage import Storage
from tests.pipeline.report import browser
from tests.pipeline.report.runs import QUICKSTART, write_summaries


@pytest.fixture
def quickstart(tmp_path: Path) -> list[dict[str, Any]]:
    storage = Storage.open_uri(str(tmp_path / "run"))
    write_summaries(storage, QUICKSTART)
    return load_summaries(storage)


def _line(figure: Any, label: str) -> tuple[Any, Any]:
    """The line with this legend label and the axis it is drawn on."""
    found = [(line, axis) for axis in figure.axes for line in axis.get_lines() if line.get_label() == label]
    assert len(found) == 1, [line.get_label() for axis in figure.axes for line in axis.get_lines()]
    return found[0]


def _height_share(line: Any, axis: Any) -> float:
    """How much of its axis's height the line spans: a flat line spans ~0."""
    low, high = axis.get_ylim()
    values = line.get_ydata()
    if axis.get_yscale() == "log":
        low, high, values = np.log10(low), np.log10(high), np.log10(values)
    return float((max(values) - min(values)) / (high - low))


def _labels(figure: Any) -> set[str]:
    return {text.get_text() for axis in figure.axes if axis.get_legend() for text in axis.get_legend().get_texts()}


def test_forgetting_is_visible_next_to_a_ten_thousand_fold_domain_gain(quickstart: list[dict[str, Any]]) -> None:
    figure = forgetting_figure(quickstart, Marks())
    general, general_axis = _line(figure, "general")
    domain, domain_axis = _line(figure, "domain (held-out)")
    assert general_axis is not domain_axis
    assert _height_share(general, general_axis) > 0.5 and _height_share(domain, domain_axis) > 0.5
    assert list(general.get_ydata()) == pytest.approx(
        [0, 100 * (1.95 / 1.887 - 1), 100 * (2.01 / 1.887 - 1), 100 * (2.066 / 1.887 - 1)]
    )
    assert general_axis.get_ylabel() == "change vs base model (%)" and general_axis.get_yscale() == "linear"
    assert list(domain.get_ydata()) == pytest.approx([1, 1.9 / 19893, 1.4 / 19893, 1.26 / 19893])  # a factor
    assert domain_axis.get_yscale() == "log"  # -99.99% and -99.99% would look alike on a linear axis


def test_error_bars_are_lm_evals_stderr(quickstart: list[dict[str, Any]]) -> None:
    axis = efficiency_figure(quickstart, Marks()).axes[0]
    bars = {c.get_label(): c for c in axis.containers}
    segments = bars["science_quiz"].lines[2][0].get_segments()
    assert [round(s[1][1] - s[0][1], 6) for s in segments] == [0.156, 0.174, 0.156, 0.132]  # 2 x stderr


def test_guardrail_recommended_export_and_budget_segments_are_marked(quickstart: list[dict[str, Any]]) -> None:
    marks = Marks(guardrail_general=0.05, recommended_tokens=409_600, segment_ends=(819_200, 1_638_400))
    forgetting = forgetting_figure(quickstart, marks)
    assert {"guardrail +5%", "recommended export", "end of a budget segment"} <= _labels(forgetting)
    guardrail, _ = _line(forgetting, "guardrail +5%")
    assert list(guardrail.get_ydata()) == [5, 5]
    star = [line for axis in forgetting.axes for line in axis.get_lines() if line.get_marker() == "*"]
    assert [(list(s.get_xdata()), s.get_label().startswith("_")) for s in star if len(s.get_xdata())] == [
        ([409_600], True)
    ]
    loss = loss_figure([{"tokens": t, "loss": 3 - t / 1e6} for t in range(0, 1_638_401, 4096)], [819_200], marks)
    assert "end of a budget segment" in _labels(loss)
    plain = forgetting_figure(quickstart, Marks())
    assert not {"guardrail +5%", "recommended export", "end of a budget segment"} & _labels(plain)


def test_marks_come_from_the_spec_and_status_as_the_api_server_has_them() -> None:
    spec = {"evaluation": {"guardrail": {"general": {"maxIncrease": "0.10"}, "action": "warn"}}}
    status = {
        "recommendedExport": "tokens-0000000819200",
        "segments": [{"tokenBudget": 1_638_400, "steps": 800}, {"tokenBudget": 409_600, "steps": 200}],
    }
    assert marks_from(spec, status) == Marks(0.10, 819_200, (409_600, 1_638_400))
    assert marks_from({"evaluation": {}}, {"recommendedExport": {"name": "tokens-0000000409600"}}) == Marks(
        None, 409_600, ()
    )
    assert marks_from(None, None) == Marks()


def test_table_1_prints_changes_against_the_base_as_the_study_does(tmp_path: Path) -> None:
    storage = Storage.open_uri(str(tmp_path / "run"))
    write_summaries(storage, QUICKSTART)
    build_report(storage)
    lines = (tmp_path / "run" / "report" / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| CPT Tokens"))
    assert header == "| CPT Tokens | science_quiz | story_quiz | Avg | Domain PPL | General PPL |"
    last = next(line for line in lines if line.startswith("| ≈ 1.64M"))
    assert (
        last
        == "| ≈ 1.64M | 0.8400 (+236.0%) | 1.0000 (+0.0%) | 0.9200 (+47.2%) | 1.26 (15,788x lower) | 2.066 (+9.5%) |"
    )
    base = next(line for line in lines if line.startswith("| 0 (Base)"))
    assert base == "| 0 (Base) | 0.2500 | 1.0000 | 0.6250 | 19,893 | 1.887 |"


def test_the_report_loads_in_a_real_browser_with_every_image_and_no_console_error(tmp_path: Path) -> None:
    storage = Storage.open_uri(str(tmp_path / "run"))
    write_summaries(storage, QUICKSTART)
    history = [{"tokens": t, "loss": 2 + 8 / (1 + t / 1e5)} for t in range(2048, 1_638_401, 2048)]
    storage.write_text("".join(json.dumps(r) + "\n" for r in history), "train", "metrics.jsonl")
    build_report(storage, marks=Marks(0.10, 819_200, ()))
    page = browser.view(tmp_path / "run" / "report" / "index.html")
    assert len(page.images) == 3 and all(i["complete"] and i["width"] > 500 for i in page.images), page.images
    assert page.errors == []
    (tmp_path / "screenshot.png").write_bytes(page.screenshot)  # 1280 x 2000, the viewport set
    assert (
        matplotlib.image.imread(tmp_path / "screenshot.png").shape[:2] == (2000, 1280)
        and matplotlib_std(page.screenshot) > 0.1
    )  # not a blank page


def test_the_browser_check_sees_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><body><img src='data:image/png;base64,bm90IGEgcG5n'>"
        "<script>console.error('boom')</script></body></html>"
    )
    seen = browser.view(page)
    assert [i["width"] for i in seen.images] == [0] and len(seen.errors) == 1 and "boom" in seen.errors[0]
    assert matplotlib_std(seen.screenshot) < 0.01  # a white page is what "blank" means


def matplotlib_std(png: bytes) -> float:
    return float(matplotlib.image.imread(io.BytesIO(png))[..., :3].std())
