"""`cpt compare --plot FILE`: the frontier drawn, domain gain against general forgetting, one point per run and
milestone labelled with its replay fraction and tokens, Pareto-optimal points ringed and joined. matplotlib is
imported only here and only when drawing (the operator image imports `cpt` and has no matplotlib)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpt.compare import CompareError, Point

FORMATS = (".png", ".svg", ".pdf")


def _axis(ratios: list[float]) -> tuple[Callable[[float], float], str, str]:
    """Where a perplexity ratio (now / base) lies on an axis: a change in % on a linear axis, or the ratio on a
    log axis when some point moved over 10-fold. Returns (transform, label suffix, scale)."""
    if all(0.1 < r < 10 for r in ratios):
        return (lambda r: 100 * (r - 1)), "change vs base (%)", "linear"
    return (lambda r: r), "/ base (log scale)", "log"


def _short(tokens: int) -> str:
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if tokens >= size:
            return f"{tokens / size:.3g}{suffix}"
    return str(tokens)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise CompareError("--plot needs matplotlib: pip install 'kubecpt[worker]' (or matplotlib)") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(found: list[Point], best: set[Point], path: Path) -> None:
    """Write the frontier to `path` (.png, .svg or .pdf)."""
    if path.suffix.lower() not in FORMATS:
        raise CompareError(f"--plot {path}: the file must end in {', '.join(FORMATS)}")
    if not found:
        raise CompareError(f"--plot {path}: no milestone has both domain and general perplexity and a base evaluation")
    plt = _pyplot()
    x, x_label, x_scale = _axis([1 + p.forgetting for p in found])
    y, y_label, y_scale = _axis([1 - p.gain for p in found])
    plt.rcParams["svg.fonttype"] = "none"  # text stays text in an SVG (searchable, selectable)
    figure, axis = plt.subplots(figsize=(8, 5.5))
    for run in dict.fromkeys(p.run for p in found):
        mine = sorted((p for p in found if p.run == run), key=lambda p: p.tokens)
        replay = mine[0].replay if mine[0].replay is not None else "?"
        axis.plot([x(1 + p.forgetting) for p in mine], [y(1 - p.gain) for p in mine], marker="o", alpha=0.8,
                  label=f"{run} (replay {replay})")  # fmt: skip
        for p in mine:
            axis.annotate(f"replay {replay}, {_short(p.tokens)}", (x(1 + p.forgetting), y(1 - p.gain)), fontsize=8,
                          textcoords="offset points", xytext=(5, 5))  # fmt: skip
    frontier = sorted(best, key=lambda p: p.forgetting)
    axis.plot([x(1 + p.forgetting) for p in frontier], [y(1 - p.gain) for p in frontier], "o--", color="black",
              markerfacecolor="none", markersize=13, linewidth=0.8, label="Pareto frontier")  # fmt: skip
    axis.set_xscale(x_scale)
    axis.set_yscale(y_scale)
    axis.invert_yaxis()  # lower domain perplexity (more gain) is up
    axis.set_xlabel(f"forgetting: general perplexity {x_label}  (right = more forgetting)")
    axis.set_ylabel(f"domain gain: domain perplexity {y_label}  (up = more gain)")
    axis.set_title("Domain gain against forgetting, per run and milestone")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
