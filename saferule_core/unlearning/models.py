"""Model directories as unlearning reads and writes them: a plain learner checkpoint
(algos.checkpoint) or a SISA ensemble directory, each written all at once or not at all."""

from __future__ import annotations

from pathlib import Path

from saferule_core.algos.base import Learner
from saferule_core.algos.checkpoint import load_learner, save_model
from saferule_core.io_utils import atomic_directory
from saferule_core.unlearning.sisa import SISAEnsemble, is_sisa_dir, load_sisa, save_sisa


def load_model(directory: Path, device: str = "cpu") -> Learner:
    """The learner (or SISA ensemble) saved in `directory`; ModelError if there is none."""
    return load_sisa(directory, device) if is_sisa_dir(directory) else load_learner(directory, device=device)


def save_model_dir(directory: Path, learner: Learner) -> Path:
    """Write `learner` as a new model directory at `directory`, replacing one that is there."""
    with atomic_directory(Path(directory), overwrite=True) as staging:
        if isinstance(learner, SISAEnsemble):
            save_sisa(staging, learner)
        else:
            save_model(staging, learner)
    return Path(directory)
