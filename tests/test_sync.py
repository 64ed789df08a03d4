"""The sync wrapper holds no socket per call (issue 16, item 2), on both routes.

Each sync call runs its own event loop; the HTTP clients made on it (the proxy route's httpx
client, litellm's cached SDK clients) must be closed when that loop ends. Sockets are
counted with psutil: this process's TCP connections whose remote end is the fault proxy.
"""

from __future__ import annotations

import asyncio
import gc

import psutil
import pytest

from retrylib import NonRetryableError, RetryConfig, make_call
from retrylib import validators as V
from retrylib.pool import close_loop_clients
from retrylib.sync import retry_with_validation_sync, run_sync

PROMPT = [{"role": "user", "content": "Say OK."}]
ROUTES = ["openai/m", "proxy/m"]


def sockets_to(port: int) -> int:
    """Open client sockets of this process to ``port`` (the proxy's own end is not counted)."""
    return sum(1 for c in psutil.Process().net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port)


@pytest.mark.parametrize("model", ROUTES)
def test_40_sync_calls_leave_no_socket(chaos_free, model):
    """40 retry_with_validation_sync calls: every answer comes back and 0 sockets stay open."""
    call = make_call(model, api_base=chaos_free.url)
    before = sockets_to(chaos_free.port)
    results = [retry_with_validation_sync(call, PROMPT, [V.ResponseNotEmpty()], RetryConfig(max_attempts=2))
               for _ in range(40)]
    gc.collect()  # a socket the collector would close is not what this test is about
    assert [r.content for r in results] == ["OK"] * 40
    assert len(chaos_free.journal()) == 40
    assert before == 0 and sockets_to(chaos_free.port) == 0


@pytest.mark.parametrize("model", ROUTES)
def test_plain_asyncio_run_closes_the_loops_clients(chaos_free, model):
    """A user's own asyncio.run per call also leaves no socket: the clients close with the loop."""
    call = make_call(model, api_base=chaos_free.url)

    async def one() -> str:
        return (await call(messages=PROMPT))["choices"][0]["message"]["content"]

    texts = [asyncio.run(one()) for _ in range(10)]
    assert texts == ["OK"] * 10
    assert sockets_to(chaos_free.port) == 0


async def test_run_sync_inside_a_running_loop(chaos_free):
    """From inside a loop (a notebook cell), run_sync runs on a worker loop and still leaks nothing."""
    call = make_call("proxy/m", api_base=chaos_free.url)
    result = run_sync(_retry(call))
    assert result.content == "OK" and sockets_to(chaos_free.port) == 0


def test_errors_propagate_and_the_loop_still_closes(chaos_free):
    """A call that fails raises its error through the wrapper, and its socket is closed too."""
    chaos_free.set_plan("401")
    call = make_call("proxy/m", api_base=chaos_free.url)
    with pytest.raises(NonRetryableError) as info:
        retry_with_validation_sync(call, PROMPT, [], RetryConfig(max_attempts=3))
    assert info.value.status_code == 401 and len(chaos_free.journal()) == 1
    assert sockets_to(chaos_free.port) == 0


async def test_close_loop_clients_mid_loop_then_go_on(chaos_free):
    """Closing the running loop's clients counts what it closed; the next request makes new ones."""
    call = make_call("proxy/m", api_base=chaos_free.url)
    await call(messages=PROMPT)
    assert sockets_to(chaos_free.port) == 1
    assert await close_loop_clients() >= 1
    assert sockets_to(chaos_free.port) == 0
    await call(messages=PROMPT)
    assert len(chaos_free.journal()) == 2
    await close_loop_clients()


async def _retry(call):
    from retrylib import retry_with_validation

    return await retry_with_validation(call, PROMPT, [V.ResponseNotEmpty()], RetryConfig(max_attempts=2))
