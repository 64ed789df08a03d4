"""Tools for testing code that uses retrylib, and for testing retrylib itself.

Imported only on purpose (``import retrylib`` does not load it):

- :class:`ScriptedCall` (with :func:`reply`, :class:`Delay`): an in-process call function that
  serves a script of replies, delays and genuine exceptions, and records every request;
- :mod:`retrylib.testing.exceptions`: those genuine exceptions (``http_error(429, ...)``,
  ``connection_refused()``, ``timeout_error()``), as each route raises them;
- :func:`set_testing`: no backoff sleeps in your test suite (stamina's model);
- :class:`ChaosProxy`: a real fault-injecting OpenAI-compatible proxy on 127.0.0.1
  (needs ``retrylib[testing]``);
- :class:`LocalModelServer`: the embedded model, llama.cpp's server on 127.0.0.1
  (needs ``retrylib[local]``);
- :class:`RedisServer`: a real ``redis-server`` on 127.0.0.1 at a free port, for the shared
  state of the budget and the breaker (needs Debian's ``redis-server``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrylib.testing.exceptions import (
    connection_error,
    connection_refused,
    connection_reset,
    http_error,
    timeout_error,
)
from retrylib.testing.mode import is_testing, set_testing
from retrylib.testing.scripted import (
    Delay,
    Request,
    ScriptedCall,
    ScriptExhausted,
    Text,
    reply,
    scripted,
)

if TYPE_CHECKING:
    from retrylib.testing.chaos import ChaosClient, ChaosProxy
    from retrylib.testing.local import LocalModelServer, free_port
    from retrylib.testing.redis import RedisServer

# Servers load on first use: they need extras (aiohttp, llama-cpp-python) that a test of the
# loop alone does not.
_LAZY = {"ChaosProxy": "retrylib.testing.chaos", "ChaosClient": "retrylib.testing.chaos",
         "LocalModelServer": "retrylib.testing.local", "free_port": "retrylib.testing.local",
         "RedisServer": "retrylib.testing.redis"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrylib.testing' has no attribute {name!r}")


__all__ = [
    "ChaosClient",
    "ChaosProxy",
    "Delay",
    "LocalModelServer",
    "RedisServer",
    "Request",
    "ScriptExhausted",
    "ScriptedCall",
    "Text",
    "connection_error",
    "connection_refused",
    "connection_reset",
    "free_port",
    "http_error",
    "is_testing",
    "reply",
    "scripted",
    "set_testing",
    "timeout_error",
]
