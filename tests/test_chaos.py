"""The chaos proxy: real HTTP on 127.0.0.1, real clients (litellm, httpx), a real model.

Tests that do not need the model use an upstream-free proxy or ``reply:`` faults, so they
run in milliseconds; the pass-through tests go to the embedded SmolLM2 server
(``local_model`` fixture). Concurrent-safe: each test uses its own ``X-Chaos-Key``.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import signal
import socket
import subprocess
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network on import

import httpx
import litellm
import pytest

from retrylib.errors import ConfigError
from retrylib.testing.chaos import FAULTS, ChaosProxy, parse_fault, parse_plan

MESSAGES = [{"role": "user", "content": "Say hello in one word."}]


@pytest.fixture(scope="module")
def proxy(local_model):
    """A proxy in front of the embedded model, shared by the module (tests use own keys)."""
    with ChaosProxy(upstream=local_model.api_base, hang_seconds=5.0) as p:
        yield p


@pytest.fixture(scope="module")
def free():
    """An upstream-free proxy: fast fixed answers, for tests that need no model."""
    with ChaosProxy(upstream=None, hang_seconds=5.0) as p:
        yield p


async def ask(url: str, *, key: str | None = None, fault: str | None = None,
              client_timeout: float = 30.0, model: str = "smollm2", **kwargs):
    """One litellm call through the proxy, without any client-side retry."""
    headers = {}
    if key is not None:
        headers["X-Chaos-Key"] = key
    if fault is not None:
        headers["X-Chaos-Fault"] = fault
    return await litellm.acompletion(
        model=f"openai/{model}", api_base=url, api_key="sk-local", messages=MESSAGES,
        num_retries=0, max_retries=0, timeout=client_timeout, extra_headers=headers, **kwargs)


def cause_names(exc: BaseException) -> list[str]:
    """The class names along an exception's cause/context chain."""
    names, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return names


# -- pass-through to the real model ---------------------------------------------------------


async def test_scripted_503_503_pass_reaches_the_real_model(proxy, local_model):
    """Two injected 503s, then the third request gets a real completion from the model."""
    proxy.set_plan("503, 503, pass", key="script")
    for _ in range(2):
        with pytest.raises(litellm.ServiceUnavailableError):
            await ask(proxy.url, key="script", model=local_model.model, max_tokens=8)
    reply = await ask(proxy.url, key="script", model=local_model.model, max_tokens=8)

    assert reply.choices[0].message.content.strip()
    assert not reply.id.startswith("chatcmpl-chaos")  # the model answered, not the proxy
    entries = proxy.journal("script")
    assert [e["fault"] for e in entries] == ["503", "503", "pass"]
    assert [e["status"] for e in entries] == [503, 503, 200]
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert entries[0]["body"]["messages"] == MESSAGES


async def test_extra_top_level_keys_reach_the_model_and_the_journal(proxy, local_model):
    """litellm's unknown kwargs (mcp_config) are journaled as sent and the server accepts them."""
    mcp = {"servers": {"debugger": {"command": "debug-mcp", "args": ["--stdio"]}}}
    reply = await ask(proxy.url, key="extra", model=local_model.model, max_tokens=4,
                      mcp_config=mcp)
    assert reply.choices[0].message.content is not None
    (entry,) = proxy.journal("extra")
    assert entry["body"]["mcp_config"] == mcp
    assert entry["status"] == 200


async def test_get_models_is_forwarded(proxy):
    """Any /v1 path is forwarded to the upstream's base URL, GETs included."""
    async with httpx.AsyncClient() as client:
        r = await client.get(proxy.url + "/models", headers={"X-Chaos-Key": "models"})
    assert r.status_code == 200
    assert r.json()["object"] == "list"
    assert proxy.journal("models")[0]["path"] == "/v1/models"


async def test_latency_delays_then_forwards(free):
    """latency:N sleeps N seconds and then answers normally."""
    start = time.monotonic()
    reply = await ask(free.url, fault="latency:0.3")
    assert time.monotonic() - start >= 0.3
    assert reply.choices[0].message.content == "OK"


async def test_unreachable_upstream_is_a_502_naming_it():
    """With nothing listening upstream, the proxy answers 502 and names the upstream URL."""
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    async with ChaosProxy(upstream=dead) as p, httpx.AsyncClient() as client:
        r = await client.post(p.url + "/chat/completions", json={"messages": MESSAGES})
    assert r.status_code == 502
    assert dead in r.json()["error"]["message"]


# -- each fault, as a client sees it --------------------------------------------------------

STATUS_TO_LITELLM = {
    "400": litellm.BadRequestError, "401": litellm.AuthenticationError,
    "403": litellm.APIError, "404": litellm.NotFoundError, "408": litellm.Timeout,
    "409": litellm.APIError, "422": litellm.BadRequestError, "429": litellm.RateLimitError,
    "500": litellm.InternalServerError, "502": litellm.BadGatewayError,
    "503": litellm.ServiceUnavailableError, "504": litellm.Timeout,
}


@pytest.mark.parametrize("status", sorted(STATUS_TO_LITELLM))
async def test_status_fault_becomes_the_matching_litellm_error(free, status):
    """Each injected status reaches litellm as its documented exception and status code."""
    with pytest.raises(STATUS_TO_LITELLM[status]) as info:
        await ask(free.url, fault=status)
    assert info.value.status_code == int(status)
    assert "injected by chaos proxy" in str(info.value)


async def test_retry_after_headers_reach_the_client(free):
    """retry-after, retry-after-ms and x-should-retry arrive on the exception's response."""
    with pytest.raises(litellm.RateLimitError) as info:
        await ask(free.url, fault="429:retry-after=2;x-should-retry=true")
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["x-should-retry"] == "true"

    with pytest.raises(litellm.RateLimitError) as info:
        await ask(free.url, fault="429:retry-after-ms=1500")
    assert info.value.response.headers["retry-after-ms"] == "1500"

    with pytest.raises(litellm.ServiceUnavailableError) as info:
        await ask(free.url, fault="503:x-should-retry=false")
    assert info.value.litellm_response_headers["x-should-retry"] == "false"


async def test_retry_after_date_is_an_http_date_in_the_future(free):
    """retry-after-date=2 sends an HTTP date about two seconds ahead."""
    with pytest.raises(litellm.RateLimitError) as info:
        await ask(free.url, fault="429:retry-after-date=2")
    when = email.utils.parsedate_to_datetime(info.value.response.headers["retry-after"])
    assert 0 <= when.timestamp() - time.time() <= 3


async def test_hang_times_out_the_client(free):
    """hang holds the request; a client with a 1 s timeout raises litellm.Timeout."""
    start = time.monotonic()
    with pytest.raises(litellm.Timeout) as info:
        await ask(free.url, key="hang", fault="hang", client_timeout=1.0)
    assert time.monotonic() - start < 3
    assert "Timeout" in " ".join(cause_names(info.value))
    assert free.journal("hang")[0]["status"] is None


async def test_hang_ends_when_the_client_leaves(free):
    """A held request is released soon after its client disconnects, not after hang_seconds."""
    async with httpx.AsyncClient(timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(free.url + "/chat/completions", json={"messages": MESSAGES},
                              headers={"X-Chaos-Key": "hang-leave", "X-Chaos-Fault": "hang:10"})
    for _ in range(60):  # the proxy notices the disconnect within its 50 ms poll
        if free.journal("hang-leave")[0]["duration"] is not None:
            break
        await asyncio.sleep(0.05)
    assert free.journal("hang-leave")[0]["duration"] < 2


async def test_reset_is_a_connection_error(free):
    """reset aborts TCP mid-body: litellm reports InternalServerError caused by a connection error."""
    with pytest.raises(litellm.InternalServerError) as info:
        await ask(free.url, fault="reset")
    assert "APIConnectionError" in cause_names(info.value)
    assert "Connection error" in str(info.value)


async def test_reset_is_a_short_body_for_httpx(free):
    """Over plain httpx a reset is a RemoteProtocolError: fewer bytes than Content-Length."""
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(free.url + "/chat/completions", json={"messages": MESSAGES},
                              headers={"X-Chaos-Fault": "reset"})


async def test_malformed_truncated_and_wrong_shape_bodies(free):
    """Broken 200 bodies reach litellm as InternalServerError, each with its own message."""
    with pytest.raises(litellm.InternalServerError, match="Expecting value"):
        await ask(free.url, fault="malformed")
    with pytest.raises(litellm.InternalServerError, match="line 1 column") as info:
        await ask(free.url, fault="truncated")  # where the cut falls decides the wording
    assert "JSONDecodeError" in cause_names(info.value)
    with pytest.raises(litellm.InternalServerError, match="no 'choices'"):
        await ask(free.url, fault="wrong_shape")

    async with httpx.AsyncClient() as client:
        cut = await client.post(free.url + "/chat/completions", json={"messages": MESSAGES},
                                headers={"X-Chaos-Fault": "truncated"})
    assert cut.status_code == 200
    assert int(cut.headers["content-length"]) == len(cut.content)  # a complete HTTP reply
    assert cut.text.startswith('{"id": "chatcmpl-chaos')
    with pytest.raises(ValueError):
        cut.json()


async def test_empty_gives_empty_content(free):
    """empty is a well-formed completion whose content is the empty string."""
    reply = await ask(free.url, fault="empty")
    assert reply.choices[0].message.content == ""


async def test_reply_gives_exactly_that_content(free):
    """reply:<content> answers exactly <content>; in list plans it may hold commas."""
    free.set_plan(["reply:Paris, France", "reply: spaced "], key="reply")
    first = await ask(free.url, key="reply")
    second = await ask(free.url, key="reply")
    assert first.choices[0].message.content == "Paris, France"
    assert second.choices[0].message.content == " spaced "
    assert first.usage.prompt_tokens == len(MESSAGES[0]["content"].split())
    assert first.usage.completion_tokens == 2


def test_every_catalogued_fault_parses():
    """Every name in FAULTS is accepted by the plan grammar."""
    tokens = [f"{name}:x" if name == "reply" else name for name in FAULTS]
    assert [f.name for f in parse_plan(tokens)] == list(FAULTS)


# -- selecting faults -----------------------------------------------------------------------


async def test_keyed_plans_do_not_interfere(free):
    """Two keys with their own sequences, requests interleaved: each gets its own faults."""
    free.set_plan("reply:a1, 503, reply:a3", key="A")
    free.set_plan("reply:b1, reply:b2", key="B")
    got = []
    for key in ("A", "B", "A", "B", "A", "B"):
        try:
            got.append((await ask(free.url, key=key)).choices[0].message.content)
        except litellm.ServiceUnavailableError:
            got.append("503")
    assert got == ["a1", "b1", "503", "b2", "a3", "OK"]  # B's plan ran out: pass
    assert [e["fault"] for e in free.journal("A")] == ["reply:a1", "503", "reply:a3"]
    assert [e["fault"] for e in free.journal("B")] == ["reply:b1", "reply:b2", "pass"]


async def test_fault_header_overrides_the_sequence(free):
    """X-Chaos-Fault wins over the key's plan, and leaves the plan's next token in place."""
    free.set_plan("503", key="override")
    reply = await ask(free.url, key="override", fault="reply:from header, with comma")
    assert reply.choices[0].message.content == "from header, with comma"
    with pytest.raises(litellm.ServiceUnavailableError):
        await ask(free.url, key="override")
    assert [e["fault"] for e in free.journal("override")] == [
        "reply:from header, with comma", "503"]


async def test_bad_fault_header_is_a_400_naming_it(free):
    """An unknown X-Chaos-Fault is answered 400 with the bad token in the message."""
    async with httpx.AsyncClient() as client:
        r = await client.post(free.url + "/chat/completions", json={},
                              headers={"X-Chaos-Fault": "explode"})
    assert r.status_code == 400
    assert "explode" in r.json()["error"]["message"]


# -- control and lifecycle ------------------------------------------------------------------


async def test_control_endpoints_over_http(free):
    """health, plan, journal and clear work over HTTP, and are not journaled themselves."""
    async with httpx.AsyncClient(base_url=free.base_url) as client:
        health = (await client.get("/_chaos/health")).json()
        assert health["status"] == "ok" and health["url"] == free.url

        r = await client.post("/_chaos/plan", json={"plan": "429, pass", "key": "ctl"})
        assert r.json() == {"key": "ctl", "plan": ["429", "pass"]}
        bad = await client.post("/_chaos/plan", json={"plan": "nope", "key": "ctl"})
        assert bad.status_code == 400 and "nope" in bad.text

        first = await client.post("/v1/chat/completions", json={"messages": MESSAGES},
                                  headers={"X-Chaos-Key": "ctl"})
        assert first.status_code == 429

        entries = (await client.get("/_chaos/journal", params={"key": "ctl"})).json()["entries"]
        assert [(e["fault"], e["status"]) for e in entries] == [("429", 429)]
        assert entries[0]["headers"]["x-chaos-key"] == "ctl"

        await client.delete("/_chaos/journal", params={"key": "ctl"})
        after = (await client.get("/_chaos/journal", params={"key": "ctl"})).json()["entries"]
        assert after == []
    assert all(not e["path"].startswith("/_chaos") for e in free.journal())


async def test_upstream_free_replies_are_labelled(free):
    """Upstream-free answers carry X-Chaos-Upstream: none and the chaos fingerprint."""
    reply = await ask(free.url)
    assert reply.choices[0].message.content == "OK"
    assert reply.system_fingerprint == "chaos-upstream-free"
    async with httpx.AsyncClient() as client:
        r = await client.post(free.url + "/chat/completions", json={"messages": MESSAGES})
    assert r.headers["x-chaos-upstream"] == "none"


def test_bad_plan_token_is_a_config_error_listing_known_faults():
    """An unknown token raises ConfigError naming it and listing the known faults."""
    with pytest.raises(ConfigError) as info:
        parse_plan("503, boom, pass")
    assert "'boom'" in str(info.value)
    assert all(name in str(info.value) for name in FAULTS)
    with pytest.raises(ConfigError, match="retry-after"):
        parse_plan("429:retry-afterr=2")
    with pytest.raises(ConfigError, match="seconds"):
        parse_plan("hang:soon")


def test_journal_returns_copies(free):
    """Mutating what journal() returns does not change the proxy's journal."""
    free.set_plan("reply:x", key="copy")
    httpx.post(free.url + "/chat/completions", json={"messages": MESSAGES},
               headers={"X-Chaos-Key": "copy"})
    entry = free.journal("copy")[0]
    entry["fault"] = "changed"
    entry["headers"]["x-chaos-key"] = "changed"
    assert free.journal("copy")[0]["fault"] == "reply:x"
    assert free.journal("copy")[0]["headers"]["x-chaos-key"] == "copy"


def test_stop_frees_the_port_and_ends_the_thread():
    """After stop() the server thread has ended and the port can be bound again."""
    p = ChaosProxy(upstream=None).start()
    port, thread = p.port, p._thread
    assert httpx.get(p.base_url + "/_chaos/health").status_code == 200
    p.stop()
    assert not thread.is_alive()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    with pytest.raises(httpx.ConnectError):
        httpx.get(p.base_url + "/_chaos/health")


def test_run_forever_prints_the_url_and_stops_on_sigterm():
    """run_forever (the CLI's engine) prints its URL line, serves, and exits on SIGTERM."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    code = "from retrylib.testing.chaos import run_forever; run_forever(upstream=None, port=0)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("chaos proxy: http://127.0.0.1:") and "upstream-free" in line
        url = line.split()[2]
        assert httpx.get(url + "/models").headers["x-chaos-upstream"] == "none"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_only_loopback():
    """The proxy refuses to bind anywhere but 127.0.0.1."""
    with pytest.raises(ConfigError):
        ChaosProxy(upstream=None, host="0.0.0.0")


@pytest.mark.parametrize(("token", "words"), [
    ("reply", "reply needs its content after a colon"),
    ("429:retry-after=nan", "retry-after needs a finite number >= 0, got 'nan'"),
    ("429:retry-after=inf", "retry-after needs a finite number >= 0, got 'inf'"),
    ("503:retry-after-ms=-5", "retry-after-ms needs a finite number >= 0"),
    ("429:x-should-retry=maybe", "x-should-retry is true or false"),
    ("hang:inf", "is not a finite number of seconds"),
])
def test_malformed_fault_tokens_are_refused_by_name(token, words):
    """Plan tokens that would send nonsense headers or hang forever are ConfigErrors naming them."""
    with pytest.raises(ConfigError) as info:
        parse_fault(token)
    assert words in str(info.value) and repr(token) in str(info.value)


def test_reply_with_empty_content_is_still_allowed():
    """`reply:` (a colon, nothing after it) is an explicit empty reply, unlike a bare `reply`."""
    assert parse_fault("reply:").content == ""


@pytest.mark.parametrize("port", [99999, -1, "8080", 1.5])
def test_bad_port_is_a_config_error(port):
    """A port outside 0–65535 (or not an int) is refused before anything binds, naming it."""
    with pytest.raises(ConfigError, match="port must be an integer from 0"):
        ChaosProxy(upstream=None, port=port)


def test_cli_bad_port_exits_2_without_a_traceback():
    """`retrylib chaos --upstream-free --port 99999` says what is wrong and exits 2."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "retrylib.cli", "chaos", "--upstream-free",
                          "--port", "99999"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "port must be an integer from 0" in out.stderr and "Traceback" not in out.stderr
