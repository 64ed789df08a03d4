"""retrylib: retry LLM calls until their output is valid.

It retries transport failures that retrying can fix (429, 5xx, timeouts, resets, honouring
``Retry-After``), re-asks the model with the validation errors when its answer is wrong,
and escalates in stages: constrained decoding, a fallback model, a debugging tool, and
finally a human (``HumanReviewNeededError``). Every attempt is recorded as data.

Quick start::

    from retrylib import RetryConfig, make_call, retry_with_validation, validators

    call = make_call("openai/smollm2", api_base="http://127.0.0.1:8080/v1")
    result = await retry_with_validation(
        call, [{"role": "user", "content": "Give me a JSON object with a key 'name'."}],
        validators=[validators.JsonObject(), validators.FieldsPresent(["name"])],
        config=RetryConfig(max_attempts=4, seed=1),
    )
    result.parsed, result.metrics, result.to_frame()
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from typing import TYPE_CHECKING, Any

from retrylib import validators
from retrylib.backoff import Backoff, backoff_schedule
from retrylib.classify import Classification, classify, parse_retry_after
from retrylib.client import acompletion, make_call
from retrylib.config import FallbackModel, RetryConfig
from retrylib.declarative import llm_call, llm_call_sync, load_llm_config
from retrylib.errors import (
    BudgetExhaustedError,
    CallCapExceededError,
    CircuitOpenError,
    ConfigError,
    ExtractionError,
    HumanReviewNeededError,
    MalformedResponseError,
    MissingExtraError,
    NonRetryableError,
    ProxyHTTPError,
    RetryError,
    RetryExhaustedError,
    RetrylibError,
    ServerDiedError,
    ServerStartError,
    ServerUnreachableError,
    StateStoreError,
    StateStoreUnavailableError,
    ValidatorError,
)
from retrylib.extract import extract_text
from retrylib.hooks import AttemptDetails, CallInfo, LogHook, MemoryHook, RssHook
from retrylib.manager import retry_with_validation, retry_with_validation_sync
from retrylib.result import Attempt, RetryResult
from retrylib.stages import Constrained, Fallback, Human, Normal, Request, Stage, Tool

if TYPE_CHECKING:
    from retrylib.batch import BatchRow, run_batch, run_batch_dask, run_batch_sync
    from retrylib.breaker import CircuitBreaker
    from retrylib.budget import CallCap, RetryBudget
    from retrylib.cache import disable_cache, init_cache
    from retrylib.state import MemoryStore, RedisStore

# The cache needs litellm (the [litellm] extra, ~4 s to import): it loads on first use, so
# that `import retrylib` works on the core install and stays fast. The litellm route of
# make_call imports litellm on its first call.
_LAZY = {"disable_cache": "retrylib.cache", "init_cache": "retrylib.cache",
         # The budget, the breaker, their state and batches: loaded on first use too.
         "RetryBudget": "retrylib.budget", "CallCap": "retrylib.budget",
         "CircuitBreaker": "retrylib.breaker", "MemoryStore": "retrylib.state",
         "RedisStore": "retrylib.state", "BatchRow": "retrylib.batch",
         "run_batch": "retrylib.batch", "run_batch_sync": "retrylib.batch",
         "run_batch_dask": "retrylib.batch"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrylib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "AttemptDetails",
    "Backoff",
    "BatchRow",
    "BudgetExhaustedError",
    "CallCap",
    "CallCapExceededError",
    "CallInfo",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "ConfigError",
    "Constrained",
    "ExtractionError",
    "Fallback",
    "FallbackModel",
    "Human",
    "HumanReviewNeededError",
    "LogHook",
    "MalformedResponseError",
    "MemoryHook",
    "MemoryStore",
    "MissingExtraError",
    "NonRetryableError",
    "Normal",
    "ProxyHTTPError",
    "RedisStore",
    "Request",
    "RetryBudget",
    "RetryConfig",
    "RetryError",
    "RetryExhaustedError",
    "RetryResult",
    "RetrylibError",
    "RssHook",
    "ServerDiedError",
    "ServerStartError",
    "ServerUnreachableError",
    "Stage",
    "StateStoreError",
    "StateStoreUnavailableError",
    "Tool",
    "ValidatorError",
    "__version__",
    "acompletion",
    "backoff_schedule",
    "classify",
    "disable_cache",
    "extract_text",
    "init_cache",
    "llm_call",
    "llm_call_sync",
    "load_llm_config",
    "make_call",
    "parse_retry_after",
    "retry_with_validation",
    "retry_with_validation_sync",
    "run_batch",
    "run_batch_dask",
    "run_batch_sync",
    "validators",
]
