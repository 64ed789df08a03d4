"""client: one call function, two routes (litellm and plain-HTTP proxy), no hidden retries.

Real completions come from the embedded model; faults come from the chaos proxy, whose
journal shows what actually went over the wire.
"""

from __future__ import annotations

import os
import pickle

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network on import

import httpx
import litellm
import pytest

from retrylib import (
    ConfigError,
    MalformedResponseError,
    ProxyHTTPError,
    RetryConfig,
    acompletion,
    classify,
    extract_text,
    make_call,
    retry_with_validation,
)
from retrylib.client import PROXY_URL_ENV, ModelCall
from retrylib.validators import RegexMatch

MESSAGES = [{"role": "user", "content": "Say hello in one word."}]
ROUTES = ["openai/smollm2", "proxy/smollm2"]


# -- real completions ----------------------------------------------------------------------


async def test_litellm_route_real_completion(local_model):
    """openai/smollm2 with api_base returns a litellm ModelResponse with the model's text."""
    resp = await acompletion(MESSAGES, model=local_model.litellm_model, api_base=local_model.api_base,
                             max_tokens=12, temperature=0)
    assert isinstance(resp, litellm.ModelResponse)
    assert extract_text(resp).strip()
    assert resp.usage.completion_tokens > 0
    assert not resp.id.startswith("chatcmpl-chaos")


async def test_proxy_route_real_completion(local_model):
    """proxy/smollm2 returns the server's JSON as a plain dict, exactly as received."""
    resp = await acompletion(MESSAGES, model=f"proxy/{local_model.model}",
                             api_base=local_model.api_base, max_tokens=12, temperature=0)
    assert type(resp) is dict
    assert resp["object"] == "chat.completion"
    assert resp["model"] == local_model.model  # the prefix was stripped before sending
    assert extract_text(resp).strip()


# -- no provider-level retries ------------------------------------------------------------


@pytest.mark.parametrize("model", ROUTES)
async def test_503_reaches_server_once_per_call(chaos, model):
    """With a 503 plan, every call fails after exactly one request: the provider does not retry."""
    chaos.set_plan(["503"] * 3)
    for _ in range(3):
        with pytest.raises(Exception) as info:
            await acompletion(MESSAGES, model=model, api_base=chaos.url, max_tokens=4)
        assert classify(info.value).status_code == 503
    journal = chaos.journal()
    assert len(journal) == 3  # requests received == calls made
    assert [e["fault"] for e in journal] == ["503"] * 3


@pytest.mark.parametrize("model", ROUTES)
async def test_caller_retry_kwargs_are_ignored(chaos, model):
    """num_retries/max_retries passed by a caller cannot switch provider retries back on."""
    chaos.set_plan(["503", "503", "503"])
    with pytest.raises(Exception):  # noqa: B017 - the route decides the class; the count matters
        await acompletion(MESSAGES, model=model, api_base=chaos.url, max_tokens=4,
                          num_retries=3, max_retries=3)
    assert len(chaos.journal()) == 1


async def test_litellm_route_503_class(chaos):
    """On the litellm route a 503 is litellm's ServiceUnavailableError with status 503."""
    chaos.set_plan(["503"])
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        await acompletion(MESSAGES, model="openai/smollm2", api_base=chaos.url, max_tokens=4)
    assert info.value.status_code == 503


# -- proxy route errors --------------------------------------------------------------------


async def test_proxy_route_non_2xx_is_proxy_http_error(chaos):
    """A non-2xx on the proxy route raises ProxyHTTPError with status, lower-cased headers and body."""
    chaos.set_plan(["429:retry-after=2;x-should-retry=true"])
    with pytest.raises(ProxyHTTPError) as info:
        await acompletion(MESSAGES, model="proxy/smollm2", api_base=chaos.url, max_tokens=4)
    err = info.value
    assert err.status_code == 429
    assert err.headers["retry-after"] == "2"
    assert err.headers["x-should-retry"] == "true"
    assert all(k == k.lower() for k in err.headers)
    assert "HTTP 429 injected by chaos proxy" in err.body
    assert "HTTP 429 from the proxy route" in str(err)
    c = classify(err)
    assert (c.retryable, c.retry_after) == (True, 2.0)
    back = pickle.loads(pickle.dumps(err))  # it survives a trip to another process
    assert (back.status_code, back.headers, back.body) == (err.status_code, err.headers, err.body)


@pytest.mark.parametrize("status", [400, 401, 404, 500, 502])
async def test_proxy_route_statuses(chaos, status):
    """Each error status arrives as ProxyHTTPError carrying that status."""
    chaos.set_plan([str(status)])
    with pytest.raises(ProxyHTTPError) as info:
        await acompletion(MESSAGES, model="proxy/smollm2", api_base=chaos.url)
    assert info.value.status_code == status
    assert classify(info.value).retryable is classify(status).retryable


@pytest.mark.parametrize("fault", ["malformed", "truncated"])
async def test_proxy_route_malformed_body(chaos, fault):
    """A 200 whose body is not JSON raises MalformedResponseError with the status and body."""
    chaos.set_plan([fault])
    with pytest.raises(MalformedResponseError) as info:
        await acompletion(MESSAGES, model="proxy/smollm2", api_base=chaos.url)
    assert info.value.http_status == 200
    assert info.value.body
    assert classify(info.value).retryable is True
    back = pickle.loads(pickle.dumps(info.value))
    assert (back.http_status, back.body) == (200, info.value.body)


async def test_proxy_route_wrong_shape_is_returned_as_is(chaos):
    """The route does not judge the shape: valid JSON without choices comes back unchanged."""
    chaos.set_plan(["wrong_shape"])
    resp = await acompletion(MESSAGES, model="proxy/smollm2", api_base=chaos.url)
    assert resp == {"result": "no choices here"}


async def test_proxy_route_timeout(chaos_free):
    """A hung server ends the proxy-route call at its timeout with a retryable timeout."""
    chaos_free.set_plan(["hang:5"])
    with pytest.raises(httpx.TimeoutException) as info:
        await acompletion(MESSAGES, model="proxy/x", api_base=chaos_free.url, timeout=0.5)
    c = classify(info.value)
    assert (c.retryable, c.reason) == (True, "timeout")


async def test_proxy_route_needs_a_base_url(monkeypatch):
    """The proxy route without api_base and without $RETRYLIB_PROXY_URL is a ConfigError."""
    monkeypatch.delenv(PROXY_URL_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"needs api_base= or \$RETRYLIB_PROXY_URL \(model proxy/smollm2\)"):
        await acompletion(MESSAGES, model="proxy/smollm2")


async def test_proxy_route_reads_env_url(chaos, monkeypatch):
    """Without api_base the proxy route uses $RETRYLIB_PROXY_URL."""
    monkeypatch.setenv(PROXY_URL_ENV, chaos.url + "/")
    chaos.set_plan(["reply:from env"])
    resp = await acompletion(MESSAGES, model="proxy/smollm2")
    assert extract_text(resp) == "from env"
    assert [e["path"] for e in chaos.journal()] == ["/v1/chat/completions"]


async def test_empty_model_is_config_error():
    """An empty model string is a ConfigError, for acompletion and make_call alike."""
    with pytest.raises(ConfigError, match="model must be a non-empty string"):
        await acompletion(MESSAGES, model="")
    with pytest.raises(ConfigError):
        make_call("")


# -- what reaches the wire -----------------------------------------------------------------


@pytest.mark.parametrize("model", ROUTES)
async def test_extra_kwargs_reach_the_wire(chaos, model):
    """mcp_config, temperature, max_tokens and extra_headers arrive in the request the server sees."""
    chaos.set_plan(["reply:ok"])
    mcp = {"command": "mcp-debugger", "args": ["--port", "0"]}
    resp = await acompletion(MESSAGES, model=model, api_base=chaos.url, temperature=0.3, max_tokens=7,
                             mcp_config=mcp, extra_headers={"X-Trace-Id": "trace-42"})
    assert extract_text(resp) == "ok"
    (entry,) = chaos.journal()
    body = entry["body"]
    assert body["model"] == "smollm2"
    assert body["messages"] == MESSAGES
    assert (body["temperature"], body["max_tokens"]) == (0.3, 7)
    assert body["mcp_config"] == mcp  # a top-level key, as litellm sends unknown kwargs
    assert entry["headers"]["x-trace-id"] == "trace-42"
    assert entry["headers"]["authorization"] == "Bearer sk-local-no-key"  # loopback placeholder


async def test_explicit_api_key_is_sent(chaos):
    """An explicit api_key replaces the loopback placeholder."""
    chaos.set_plan(["reply:ok", "reply:ok"])
    for model in ROUTES:
        await acompletion(MESSAGES, model=model, api_base=chaos.url, api_key="sk-mine")
    assert [e["headers"]["authorization"] for e in chaos.journal()] == ["Bearer sk-mine"] * 2


# -- ModelCall ------------------------------------------------------------------------------


async def test_model_call_defaults_and_overrides(chaos):
    """make_call binds defaults; per-call kwargs override them for that call only."""
    chaos.set_plan(["reply:a", "reply:b", "reply:c"])
    call = make_call("openai/smollm2", api_base=chaos.url, temperature=0.1, max_tokens=9)
    assert isinstance(call, ModelCall)
    await call(messages=MESSAGES)
    await call(messages=MESSAGES, temperature=0.9)
    await call(messages=MESSAGES)
    bodies = [e["body"] for e in chaos.journal()]
    assert [b["temperature"] for b in bodies] == [0.1, 0.9, 0.1]
    assert all(b["max_tokens"] == 9 for b in bodies)
    assert call.defaults == {"api_base": chaos.url, "temperature": 0.1, "max_tokens": 9}


async def test_model_call_model_and_route_override(chaos, chaos_free):
    """model= and api_base= per call switch model, server and even route (as the fallback stage does)."""
    chaos.set_plan(["reply:primary"])
    chaos_free.set_plan(["reply:other", "reply:proxied"])
    call = make_call("openai/smollm2", api_base=chaos.url)
    r1 = await call(messages=MESSAGES)
    r2 = await call(messages=MESSAGES, model="openai/backup-model", api_base=chaos_free.url)
    r3 = await call(messages=MESSAGES, model="proxy/third", api_base=chaos_free.url)
    assert [extract_text(r) for r in (r1, r2, r3)] == ["primary", "other", "proxied"]
    assert isinstance(r2, litellm.ModelResponse) and type(r3) is dict
    assert [e["body"]["model"] for e in chaos.journal()] == ["smollm2"]
    free = chaos_free.journal()
    assert [e["body"]["model"] for e in free] == ["backup-model", "third"]
    assert free[1]["headers"]["user-agent"].startswith("python-httpx")  # the plain-HTTP route
    assert call.model == "openai/smollm2"  # the binding itself is unchanged


async def test_fallback_stage_uses_model_override(chaos, chaos_free):
    """In retry_with_validation the fallback stage sends the fallback model to its own server."""
    chaos.set_plan(["reply:bad answer"])
    chaos_free.set_plan(["reply:good answer"])
    config = RetryConfig(max_attempts=3, max_attempts_before_fallback=1, seed=1, fallback_models=[
        {"model": "openai/fallback-model", "api_base": chaos_free.url}])
    result = await retry_with_validation(make_call("openai/smollm2", api_base=chaos.url), MESSAGES,
                                         [RegexMatch("good")], config)
    assert result.content == "good answer"
    assert [a.stage for a in result.attempts] == ["normal", "fallback"]
    assert result.attempts[0].model.endswith("smollm2")
    assert result.attempts[1].model == "openai/fallback-model"
    assert [e["body"]["model"] for e in chaos.journal()] == ["smollm2"]
    assert [e["body"]["model"] for e in chaos_free.journal()] == ["fallback-model"]


def test_model_call_repr_hides_the_key():
    """repr(ModelCall) shows the model and defaults but never the api_key."""
    r = repr(make_call("openai/x", api_base="http://127.0.0.1:1/v1", api_key="sk-secret", temperature=0))
    assert "openai/x" in r and "temperature" in r
    assert "sk-secret" not in r
