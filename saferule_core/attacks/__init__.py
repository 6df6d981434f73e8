"""Poisoning attacks on logged datasets; each returns the poisoned dataset and exactly what it touched."""

from saferule_core.attacks.base import (
    DEFAULT_POISON_RATE,
    POISON_RECORD_FILE,
    AttackConfig,
    PoisonResult,
    poison_record_bytes,
    poisoned_episode_mask,
)
from saferule_core.attacks.inject import InjectConfig, inject_attack
from saferule_core.attacks.relabel import RelabelConfig, relabel_attack
from saferule_core.attacks.trigger import TriggerConfig, trigger_attack
from saferule_core.errors import AttackError

ATTACK_NAMES: tuple[str, ...] = ("relabel", "inject", "trigger")

__all__ = [
    "ATTACK_NAMES", "DEFAULT_POISON_RATE", "POISON_RECORD_FILE", "AttackConfig", "AttackError", "InjectConfig",
    "PoisonResult", "RelabelConfig", "TriggerConfig", "inject_attack", "poison_record_bytes", "poisoned_episode_mask",
    "relabel_attack", "trigger_attack",
]
