"""The reward/cost scatter is written as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from saferule_core.collect import save_reward_cost_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_scatter_png_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    costs = rng.uniform(0, 80, size=50)
    returns = 200 + 10 * costs + rng.normal(0, 20, size=50)
    path = tmp_path / "plots" / "reward_cost.png"
    save_reward_cost_png(path, returns, costs, aggressiveness=costs / 80, title="BallRun")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    image = imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert not list(tmp_path.glob("plots/.*.tmp"))


def test_scatter_without_aggressiveness_is_written(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    save_reward_cost_png(path, np.array([1.0, 2.0]), np.array([0.0, 30.0]), aggressiveness=None)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
