"""The wheel (what the container images install) carries every subpackage and the shipped data files (the
throughput table, the task files)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contains_all_modules_and_task_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("kubecpt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in (("cpt", "cpt"), ("operator", "cpt_operator"), ("pipeline", "cpt_pipeline")):
        for source in (REPO / folder).rglob("*.py"):
            assert f"{package}/{source.relative_to(REPO / folder).as_posix()}" in names, source
    assert "cpt/throughput.yaml" in names  # cpt plan's and the operator's throughput table
    for task in (REPO / "pipeline" / "evaluate" / "tasks").iterdir():
        assert f"cpt_pipeline/evaluate/tasks/{task.name}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cpt = cpt.cli:main" in text and "report = cpt_pipeline.cli:add_report" in text
