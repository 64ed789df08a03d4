"""A public structured-extraction benchmark: retry strategies side by side on small models.

Each case is a short text, a pydantic model, and the values a correct extraction holds
(:mod:`.cases`). Each strategy is a function ``(case, target, budget) -> Record``
(:mod:`.strategies`): single shot, naive resampling, feedback re-ask, instructor's re-ask,
constrained single shot, and retrylib's escalation ladder. :mod:`.run` runs them against the
embedded models and tabulates valid %, correct %, attempts, tokens and seconds per cell;
:mod:`.plots` draws success against tokens and attempts.

Run it: ``python -m benchmarks.extraction.run [--quick] [--models smollm2,gemma3]``.
"""

# run.py is not imported here: ``python -m benchmarks.extraction.run`` must find it unloaded.
from benchmarks.extraction.cases import CASES, Case, messages_for, score
from benchmarks.extraction.strategies import STRATEGIES, Budget, Record, Target

__all__ = [
    "CASES",
    "STRATEGIES",
    "Budget",
    "Case",
    "Record",
    "Target",
    "messages_for",
    "score",
]
