"""The learner and training-loop settings as plain dataclasses, without torch: the CLI's help reads
their defaults from here (a learner's own config adds its fields in its module)."""

from __future__ import annotations

from dataclasses import dataclass

from saferule_core.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
# How the work runs rather than what is learnt: a settings file may group them under `compute:`.
LEARNER_COMPUTE_KEYS: tuple[str, ...] = ("precision", "compile", "optimizer", "device")   # LearnerConfig fields
LOOP_COMPUTE_KEYS: tuple[str, ...] = ("num_threads", "tune_allocator")                   # LoopConfig fields
OPTIMIZER_IMPLS: tuple[str, ...] = ("fused", "foreach", "for_loop")


@dataclass
class LearnerConfig:
    """Settings shared by all learners (each learner's config adds its own)."""

    cost_limit: float = 10.0          # episode cost budget
    episode_len: int = 0              # 0: the task's episode length, else the longest episode
    normalize_observations: bool = True
    precision: str = "fp32"           # "bf16": matmuls under bfloat16 autocast, fp32 master weights
    compile: bool = False             # torch.compile the loss computations
    optimizer: str = "fused"          # Adam implementation: "fused" | "foreach" | "for_loop"
    device: str = "cpu"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZER_IMPLS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZER_IMPLS)}, got {self.optimizer!r}")
        if self.cost_limit < 0:
            raise ConfigError(f"cost_limit must be >= 0, got {self.cost_limit}")
        if self.episode_len < 0:
            raise ConfigError(f"episode_len must be >= 0, got {self.episode_len}")


@dataclass
class LoopConfig:
    """How a training loop runs, for one model or a stack of them (`algos.stacked`)."""

    steps: int = 100_000
    batch_size: int = 512
    num_threads: int = 2
    log_every: int = 100              # average and write metrics every N steps
    checkpoint_every: int = 10_000    # 0: only at the end
    progress: bool = True
    tune_allocator: bool = True       # see tune_cpu_allocator

    def validate(self) -> None:
        for name in ("steps", "batch_size", "num_threads", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


@dataclass
class TrainConfig(LoopConfig):
    """One model's training: the loop and its seed (a stack has one seed per model instead)."""

    seed: int = 0
