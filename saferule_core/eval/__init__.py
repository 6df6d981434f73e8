"""Policy evaluation: online returns/costs with DSRL's normalised scores, and forget quality."""

from saferule_core.errors import EvaluationError
from saferule_core.eval.evaluate import EvalResult, evaluate_policy
from saferule_core.eval.forget import forget_quality

__all__ = ["EvalResult", "EvaluationError", "evaluate_policy", "forget_quality"]
