"""Optional dependencies: import one, or say which extra brings it.

The core install (``pip install retrylib``) is the retry loop and what it needs: pydantic,
httpx, loguru and PyYAML. Everything else is an extra, and a feature that needs one names it
when it is missing::

    >>> result.to_frame()
    MissingExtraError: RetryResult.to_frame() needs pandas: pip install 'retrylib[workbook]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from retrylib.errors import MissingExtraError

# The extra that brings each optional top-level module (see pyproject.toml).
EXTRA_OF = {
    "litellm": "litellm",
    "diskcache": "litellm",
    "jsonschema": "jsonschema",
    "aiohttp": "testing",
    "llama_cpp": "local",
    "pandas": "workbook",
    "matplotlib": "workbook",
    "papermill": "workbook",
    "psutil": "workbook",
    "PIL": "images",
    "mcp": "mcp",
    "mcp_types": "mcp",
    "redis": "redis",
    "dask": "dask",
    "distributed": "dask",
    "tqdm": "workbook",
    "opentelemetry": "otel",
    "json_repair": "repair",
}


def missing(exc: ModuleNotFoundError, feature: str) -> BaseException:
    """The error to raise for ``exc``: a :class:`MissingExtraError` naming the extra that
    brings the missing module, or ``exc`` itself when the module is not an optional one.

    Use it around top-level imports that need an extra, so type checkers still see them::

        try:
            import litellm
        except ModuleNotFoundError as exc:
            raise missing(exc, "the response cache") from None
    """
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return exc
    return MissingExtraError(f"{feature} needs {top}: pip install 'retrylib[{extra}]'", extra=extra)


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise an error naming the extra to install.

    Args:
        module: the dotted module name (its top-level package picks the extra).
        feature: what needs it, for the message (``"the litellm route"``).

    Raises:
        MissingExtraError: the module is not installed (an ``ImportError``).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the module is there, but something it imports is broken: show that
        extra = EXTRA_OF.get(top)
        hint = f"pip install 'retrylib[{extra}]'" if extra else f"pip install {top}"
        raise MissingExtraError(f"{feature} needs {top}: {hint}", extra=extra) from None
