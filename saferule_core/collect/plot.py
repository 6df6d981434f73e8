"""Reward/cost scatter of a dataset's episodes (PNG), coloured by behaviour aggressiveness."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from saferule_core.io_utils import atomic_write_bytes

THRESHOLD_COLOURS = ("tab:green", "tab:orange", "tab:red")


def reward_cost_png(returns: NDArray[Any], costs: NDArray[Any], aggressiveness: NDArray[Any] | None = None,
                    thresholds: Sequence[float] = (10.0, 20.0, 40.0), title: str = "") -> bytes:
    """The scatter as PNG bytes: episode cost on x, episode return on y, cost limits as lines."""
    fig = Figure(figsize=(7.0, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colour = None if aggressiveness is None or np.isnan(aggressiveness).all() else aggressiveness
    if colour is None:
        ax.scatter(costs, returns, color="tab:blue", s=14, alpha=0.8, edgecolors="none")
    else:
        points = ax.scatter(costs, returns, c=colour, cmap="plasma", vmin=0.0, vmax=1.0, s=14, alpha=0.8,
                            edgecolors="none")
        fig.colorbar(points, ax=ax, label="behaviour aggressiveness")
    for k, threshold in enumerate(thresholds):
        ax.axvline(threshold, color=THRESHOLD_COLOURS[k % len(THRESHOLD_COLOURS)], linestyle="--",
                   linewidth=1.2, label=f"cost limit {threshold:g}")
    unsafe = float(np.mean(costs > thresholds[0])) if len(costs) and len(thresholds) else 0.0
    ax.set_xlabel("episode cost")
    ax.set_ylabel("episode return")
    ax.set_title(f"{title}  ({len(costs)} episodes, {unsafe:.0%} above cost {thresholds[0]:g})"
                 if thresholds else title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def save_reward_cost_png(path: Path, returns: NDArray[Any], costs: NDArray[Any],
                         aggressiveness: NDArray[Any] | None = None,
                         thresholds: Sequence[float] = (10.0, 20.0, 40.0), title: str = "") -> None:
    atomic_write_bytes(Path(path), reward_cost_png(returns, costs, aggressiveness, thresholds, title))
