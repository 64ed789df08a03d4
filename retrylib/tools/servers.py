"""The ``mcpServers`` config, read and checked before any process starts.

The Claude-style form (what ``RetryConfig.debug_tool_mcp_config`` holds)::

    {"mcpServers": {
        "python": {"command": "/usr/bin/python3", "args": ["-m", "retrylib.tools.run_python"],
                   "env": {"KEY": "value"}, "cwd": "/tmp"},
        "remote": {"url": "http://127.0.0.1:8765/mcp", "headers": {"Authorization": "..."}},
    }}

A server with ``command`` runs over stdio; one with ``url`` is reached over streamable HTTP.
``timeout`` (seconds, as in Cline's config) bounds each call of that server's tools; it
wins over the session's and the caller's per-call timeout (``RetryConfig.tool_timeout``).
``type`` may say so explicitly (``stdio``, ``http``, ``streamable-http``); ``sse`` (the
deprecated transport) is refused. A server marked ``"disabled": true`` is skipped. Every
problem is a :class:`~retrylib.errors.ConfigError` that names the server and the field.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from retrylib.errors import ConfigError

_STDIO_TYPES = {"stdio"}
_HTTP_TYPES = {"http", "streamable-http", "streamable_http", "streamablehttp"}
_KNOWN_KEYS = {"command", "args", "env", "cwd", "url", "headers", "type", "disabled",
               "description", "timeout"}


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server of the config, checked.

    Attributes:
        name: its key in ``mcpServers``.
        transport: ``stdio`` or ``http`` (streamable HTTP).
        command: the executable, resolved to an absolute path (stdio).
        args, env, cwd: as configured (stdio).
        url, headers: as configured (http).
        timeout: seconds per tool call for this server's tools (``None``: the caller's).
    """

    name: str
    transport: Literal["stdio", "http"]
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None


def parse_mcp_config(config: Any) -> list[ServerSpec]:
    """Check an ``{"mcpServers": {...}}`` dict and resolve each server's command.

    Args:
        config: the dict (a ``RetryConfig.debug_tool_mcp_config``).

    Returns:
        One :class:`ServerSpec` per enabled server, in the config's order.

    Raises:
        ConfigError: no ``mcpServers``, an empty one, a server that is not a dict, has
            neither ``command`` nor ``url`` (or both), a command not found, an ``args`` that
            is not a list of strings, an ``env`` that is not a dict of strings, a missing
            ``cwd``, a URL that is not http(s), an unsupported ``type``, or a ``timeout``
            that is not a number of seconds in (0, 3600].
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"the MCP config must be a dict with 'mcpServers', got {type(config).__name__}")
    servers = config.get("mcpServers")
    if servers is None:
        keys = ", ".join(map(str, config)) or "none"
        raise ConfigError(f"the MCP config has no 'mcpServers' key (its keys: {keys})")
    if not isinstance(servers, Mapping) or not servers:
        raise ConfigError("the MCP config's 'mcpServers' must be a non-empty dict of name -> server")
    specs = []
    for name, entry in servers.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"MCP server names must be non-empty strings, got {name!r}")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"MCP server {name!r}: must be a dict with 'command' or 'url', "
                              f"got {type(entry).__name__}")
        if entry.get("disabled") is True:
            continue
        specs.append(_parse_server(name, entry))
    if not specs:
        raise ConfigError("the MCP config's servers are all disabled")
    return specs


def _parse_server(name: str, entry: Mapping[str, Any]) -> ServerSpec:
    where = f"MCP server {name!r}"
    unknown = sorted(set(map(str, entry)) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(_KNOWN_KEYS))})")
    kind = entry.get("type")
    command, url = entry.get("command"), entry.get("url")
    if kind is not None and kind not in _STDIO_TYPES | _HTTP_TYPES:
        hint = " (the deprecated SSE transport is not supported: serve streamable HTTP)" \
            if kind == "sse" else ""
        raise ConfigError(f"{where}: unsupported type {kind!r}{hint}; use 'stdio' or 'http'")
    if command is not None and url is not None:
        raise ConfigError(f"{where}: has both 'command' and 'url'; give one")
    timeout = _timeout(where, entry.get("timeout"))
    if command is None and url is None:
        raise ConfigError(f"{where}: has neither 'command' (a stdio server) nor 'url' "
                          "(a streamable HTTP server)")
    if url is not None or kind in _HTTP_TYPES:
        if url is None:
            raise ConfigError(f"{where}: type {kind!r} needs a 'url'")
        parsed = urlparse(str(url))
        if not isinstance(url, str) or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{where}: 'url' must be an http(s) URL, got {url!r}")
        return ServerSpec(name, "http", url=url, headers=_str_dict(where, "headers", entry.get("headers")),
                          timeout=timeout)
    if not isinstance(command, str) or not command.strip():
        raise ConfigError(f"{where}: 'command' must be a non-empty string, got {command!r}")
    args = entry.get("args", [])
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{where}: 'args' must be a list of strings, got {args!r}")
    env = _str_dict(where, "env", entry.get("env"))
    cwd = entry.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str | os.PathLike) or not Path(cwd).is_dir():
            raise ConfigError(f"{where}: 'cwd' {cwd!r} is not an existing directory")
        cwd = str(cwd)
    return ServerSpec(name, "stdio", command=_resolve(where, command, env, cwd), args=tuple(args),
                      env=env, cwd=cwd, timeout=timeout)


def _timeout(where: str, value: Any) -> float | None:
    """The server's ``timeout``, in seconds. Above an hour it is refused: a value in
    milliseconds (as some clients write it) would otherwise wait for days."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ConfigError(f"{where}: 'timeout' must be a number of seconds in (0, 3600] (the "
                          f"limit of each tool call), got {value!r}")
    return float(value)


def _str_dict(where: str, key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where}: {key!r} must be a dict of strings to strings, got {value!r}")
    return dict(value)


def _resolve(where: str, command: str, env: Mapping[str, str], cwd: str | None) -> str:
    """The command as an absolute path: the SDK gives the child only PATH, HOME and a few
    more, so a name is looked up on the PATH the child will have."""
    if os.sep in command:
        path = Path(command).expanduser()
        if not path.is_absolute() and cwd:
            path = Path(cwd) / path
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigError(f"{where}: command {command!r} not found or not executable")
        return str(path.absolute())  # not resolve(): a venv's python is a symlink that must stay one
    found = shutil.which(command, path=env.get("PATH") or os.environ.get("PATH"))
    if found is None:
        raise ConfigError(f"{where}: command {command!r} not found on PATH")
    return found
