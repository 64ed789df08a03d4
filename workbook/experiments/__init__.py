"""The measurement code behind the workbook notebooks, one module per verification task.

Notebooks stay thin: they call these functions, plot what comes back, and assert on it.
:func:`session` gives every notebook the servers it needs, reusing the ones the workbook
runner started (their URLs arrive as papermill parameters) or starting its own when the
notebook is run by hand in JupyterLab.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass, field
from typing import Any

from retrylib import hooks
from retrylib.client import make_call
from retrylib.errors import ConfigError
from retrylib.testing.chaos import ChaosClient, ChaosProxy
from retrylib.testing.local import LocalModelServer

# The workbook plots the RSS of every attempt: it installs the hook that reads it (a plain
# retrylib call pays for no reading).
if not any(isinstance(h, hooks.RssHook) for h in hooks.installed()):
    hooks.install(*hooks.installed(), hooks.RssHook())


@dataclass
class Session:
    """What a notebook talks to.

    Attributes:
        model: the litellm model string under test (``openai/smollm2``).
        api_base: its OpenAI base URL (``None``: the provider's default).
        chaos: the fault proxy (in-process ``ChaosProxy`` or remote ``ChaosClient``), with
            ``url``, ``set_plan(plan, key)``, ``journal(key)`` and ``clear(key)``.
        proxy_model: the model name to send through the proxy (``model`` without provider).
    """

    model: str
    api_base: str | None
    chaos: Any
    proxy_model: str
    _owned: list[Any] = field(default_factory=list, repr=False)

    def call(self, via: str = "direct", **defaults: Any) -> Any:
        """A ``ModelCall`` to the model: ``direct``, ``chaos`` (litellm through the fault
        proxy) or ``proxy`` (the plain-HTTP proxy route through the fault proxy)."""
        if via == "direct":
            return make_call(self.model, api_base=self.api_base, **defaults)
        if via == "chaos":
            return make_call(f"openai/{self.proxy_model}", api_base=self.chaos.url, **defaults)
        if via == "proxy":
            return make_call(f"proxy/{self.proxy_model}", api_base=self.chaos.url, **defaults)
        raise ConfigError(f"unknown route {via!r}: use direct, chaos or proxy")

    def close(self) -> None:
        """Stop whatever this session started (not what the runner started)."""
        while self._owned:
            self._owned.pop().stop()


def session(model: str = "openai/smollm2", api_base: str | None = None,
            chaos_url: str | None = None, local_model: str = "smollm2") -> Session:
    """Connect to (or start) the model server and the fault proxy.

    Args:
        model: litellm model string. For ``openai/<name>`` with no ``api_base``, the embedded
            server is started with ``local_model`` under that name.
        api_base: the model's base URL, when already running (the runner passes it).
        chaos_url: the fault proxy's ``/v1`` URL, when already running.
        local_model: which embedded model to start when needed (``smollm2``, ``gemma3``, path).

    Returns:
        A :class:`Session`; call ``close()`` at the end (it also runs at exit).
    """
    if not model or not isinstance(model, str):
        raise ConfigError(f"parameter 'model' must be a litellm model string, got {model!r}")
    owned: list[Any] = []
    provider, _, name = model.partition("/")
    if api_base is None and provider == "openai":
        srv = LocalModelServer(local_model, alias=name or None, n_ctx=4096).start()
        owned.append(srv)
        api_base = srv.api_base
    if chaos_url:
        chaos: Any = ChaosClient(chaos_url)
    else:
        chaos = ChaosProxy(upstream=api_base).start() if api_base else ChaosProxy(upstream_free=True).start()
        owned.append(chaos)
    s = Session(model=model, api_base=api_base, chaos=chaos, proxy_model=name or model, _owned=owned)
    atexit.register(s.close)
    return s
