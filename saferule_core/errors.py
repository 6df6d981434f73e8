"""Errors a user can act on. Every message names the problem and, where it helps, the fix.

The CLI prints these as one line (no traceback) and exits non-zero.
"""


class SafeRuleError(Exception):
    """Base class: an error caused by input, not by a bug."""


class DatasetError(SafeRuleError):
    """A dataset file or array is corrupt, truncated, mis-shaped or non-finite."""


class SelectorError(SafeRuleError):
    """A forget selector is malformed or matches nothing."""


class TaskError(SafeRuleError):
    """Unknown task name or an environment that cannot be made."""


class ModelError(SafeRuleError):
    """A model checkpoint is missing, corrupt or does not match the dataset's spaces."""


class ArtifactError(SafeRuleError):
    """A policy artifact is unsigned, altered, mis-shaped or produces bad actions."""


class UnlearningError(SafeRuleError):
    """An unlearning request cannot be carried out (empty forget set, all data, ...)."""


class CollectionError(SafeRuleError):
    """Collection settings that cannot work (no episodes, an empty robot list, a bad range)."""


class ConfigError(SafeRuleError):
    """A learner or training setting is unknown or out of range."""


class LedgerError(SafeRuleError):
    """A ledger file is corrupt, or a request or state change is not allowed."""


class EvaluationError(SafeRuleError):
    """Evaluation settings that cannot work (no episodes, no thresholds)."""


class AttackError(SafeRuleError):
    """An attack cannot be applied to this dataset with this configuration."""


class ForgetRequestError(SafeRuleError):
    """A forget request names a dataset or request that is not there, or not allowed (outside the data root)."""
