"""The PNG of eval-recall: recall@k against p50 latency, one point per strategy.

matplotlib is an optional dependency (the ``eval`` extra): only this plot needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.errors import ConfigError


def plot_recall(rows: Sequence[dict[str, Any]], top_k: int, path: Path, title: str = "") -> None:
    """Write the plot to ``path``; ConfigError when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to a file
        from matplotlib import pyplot
    except ImportError as exc:
        raise ConfigError(
            "eval-recall's plot needs matplotlib: pip install 'embedstream[eval]' (or matplotlib)"
        ) from exc
    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for funnel, marker, label in ((False, "o", "replica, direct"), (True, "^", "funnel (re-scored)")):
            points = [r for r in rows if bool(r["funnel_factor"]) == funnel]
            if points:
                axes.scatter(
                    [r["p50_ms"] for r in points], [r["recall"] for r in points], marker=marker, label=label
                )
            for r in points:
                axes.annotate(
                    r["strategy"],
                    (r["p50_ms"], r["recall"]),
                    fontsize=7,
                    xytext=(4, -3),
                    textcoords="offset points",
                )
        axes.axhline(0.95, color="grey", linestyle=":", linewidth=1)
        axes.set_xlabel("p50 latency per query (ms)")
        axes.set_ylabel(f"recall@{top_k} vs exact full-dimension search")
        axes.set_title(title, fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
        figure.tight_layout()
        figure.savefig(path)
    finally:
        pyplot.close(figure)
