"""A real ``redis-server`` on 127.0.0.1 at a free port, for tests: no persistence, no fakes.

:class:`RedisServer` starts Debian's ``redis-server`` (``apt-get install redis-server``;
``.ci/run`` installs it) with ``--save "" --appendonly no``, waits until it answers
``PING``, and stops it. A test of "Redis goes away" calls :meth:`~RedisServer.kill`
(SIGKILL) or :meth:`~RedisServer.pause` (SIGSTOP: a server that is there but silent), and
:meth:`~RedisServer.start` brings it back on the same port::

    with RedisServer() as redis:
        store = RedisStore(redis.url)
        ...
        redis.kill()                       # mid-run

The server runs under a small watchdog process that holds a pipe from this process: when
this process dies, however it dies, the watchdog ends the server, so a killed test run
leaves no ``redis-server`` behind. ``PING`` is spoken over a plain socket: this module needs
no Redis client.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retrylib.errors import ConfigError, ServerStartError
from retrylib.testing._context import StartStop

DEFAULT_BINARY = "/usr/bin/redis-server"
_INSTALL = "install Debian's redis-server package (apt-get install redis-server; .ci/run does)"

# argv[1:]: the server's command. Prints the server's pid, then waits: for EOF on stdin
# (this process is gone: end the server) or for the server's own exit (then exit too).
_WATCHDOG = r"""
import os, subprocess, sys, threading
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.STDOUT)
sys.stdout.write(f"{p.pid}\n"); sys.stdout.flush()
threading.Thread(target=lambda: (p.wait(), os._exit(0)), daemon=True).start()
try:
    while sys.stdin.buffer.read(1):
        pass
except Exception:
    pass
os.kill(p.pid, 9)
os._exit(0)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server at ``host:port`` answers ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(StartStop):
    """A ``redis-server`` on 127.0.0.1, started and stopped by this object.

    Args:
        port: the port; ``0`` picks a free one when first started (then kept, so that a
            server brought back after :meth:`kill` listens where its clients look).
        binary: the ``redis-server`` executable (default ``/usr/bin/redis-server``, else the
            one on ``PATH``).
        start_timeout: seconds to wait for the first ``PONG``.
        extra_args: more ``redis-server`` options (``["--maxmemory", "10mb"]``).

    Raises:
        ConfigError: a port outside 0-65535.
    """

    def __init__(self, port: int = 0, *, binary: str | None = None, start_timeout: float = 10.0,
                 extra_args: tuple[str, ...] | list[str] = ()):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"RedisServer port must be an integer from 0 (any free port) to "
                              f"65535, got {port!r}")
        self.host, self.port = "127.0.0.1", int(port)
        self.binary = binary
        self.start_timeout = float(start_timeout)
        self.extra_args = tuple(extra_args)
        self.pid: int | None = None  # the redis-server's own pid, while it runs
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._paused = False

    def __repr__(self) -> str:
        return f"<RedisServer {self.url if self.running else 'stopped'}>"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """The server process is alive (it may be paused)."""
        return self._watchdog is not None and self._watchdog.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The server's log file, while this object exists."""
        return Path(self._dir.name) / "redis.log" if self._dir else None

    def _binary(self) -> str:
        for candidate in (self.binary, DEFAULT_BINARY if self.binary is None else None,
                          shutil.which("redis-server") if self.binary is None else None):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
        where = self.binary or f"{DEFAULT_BINARY} or on PATH"
        raise ServerStartError(f"redis-server not found ({where}): {_INSTALL}")

    def start(self) -> RedisServer:
        """Start the server (again, after :meth:`kill`) and wait until it answers ``PING``.

        Returns:
            ``self``.

        Raises:
            ServerStartError: no ``redis-server``, or it did not answer within
                ``start_timeout`` (the message quotes its log).
        """
        if self.running:
            return self
        binary = self._binary()
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="retrylib-redis-")
        last = ""
        for _ in range(3):  # a port picked free can be taken before the server binds it
            port = self.port or _free_port()
            last = self._spawn(binary, port)
            if not last:
                self.port = port
                return self
            if self.port:  # a fixed port: trying again would not help
                break
        raise ServerStartError(f"redis-server did not start on 127.0.0.1:{self.port or port}: {last}")

    def _spawn(self, binary: str, port: int) -> str:
        """Start one server; ``""`` once it answers, else why it did not."""
        assert self._dir is not None
        log = Path(self._dir.name) / "redis.log"
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", self._dir.name, "--logfile", str(log),
               "--daemonize", "no", *self.extra_args]
        self._watchdog = subprocess.Popen([sys.executable, "-I", "-c", _WATCHDOG, *cmd],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._watchdog.stdout is not None
        self.pid = int(self._watchdog.stdout.readline() or 0) or None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if ping(self.host, port):
                self._paused = False
                return ""
            if self._watchdog.poll() is not None:
                break
            time.sleep(0.02)
        self._reap(signal.SIGKILL)
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
        return f"no PONG within {self.start_timeout:g} s; its log:\n{tail}"

    def _signal(self, sig: int) -> None:
        if self.pid is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _reap(self, sig: int) -> None:
        if self._paused:
            self._signal(signal.SIGCONT)
        self._signal(sig)
        dog = self._watchdog
        if dog is not None:
            try:
                dog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                dog.kill()
                dog.wait(timeout=5)
            for stream in (dog.stdin, dog.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._watchdog, self.pid, self._paused = None, None, False

    def kill(self) -> None:
        """SIGKILL the server now, as a crash would (the port stays this object's)."""
        self._reap(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open and nothing answers (a hung Redis)."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """Stop the server (SIGTERM; SIGKILL after 5 s) and remove its directory."""
        self._reap(signal.SIGTERM)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
