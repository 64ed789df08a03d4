"""The tool rounds of one attempt: offer the tools, run the model's calls, ask for the answer.

:func:`run_tool_rounds` is what the retry loop's tool stage calls in place of its one
request. Each round sends the conversation with ``tools=``, runs every tool call the reply
holds through the :class:`~retrylib.tools.ToolSession`, and feeds the results back. The
rounds are ``tool_choice="auto"``, except that ``force_tool`` makes the first one force a
named function; the loop does that by default (``RetryConfig.tool_choice="force"``), since
the small models measured here never chose a tool in ``auto`` mode (pitfall 4). When the
model answers in plain text, or the rounds are used up, one last request *without* tools
asks for the final answer, which the loop then validates. At most ``max_rounds`` + 1
requests; their tokens and cost are summed in :class:`ToolRounds`, which is filled in as the
rounds go (pass ``record=``), so what ran survives a request that fails, a cancel or a
timeout.

The measured pitfalls of llama.cpp's templates (``../shared/MCP.md``), and what is done:

1. ``role: "tool"`` messages are dropped by the templates: results go back in a **user**
   message (``result_role="tool"`` sends OpenAI tool messages instead, for servers that
   require them);
2. an assistant message with ``content: None`` gives HTTP 500: it is always ``""``;
3. templates show tools only through a system message: the tools are described in one
   (added, or appended to the caller's), besides ``tools=``;
4. ``tool_choice="required"`` gives HTTP 500 on llama.cpp and an absent one means no
   tools: it is ``"auto"``, or (``force_tool``) a named function in the first round. Measured
   here: in ``auto`` mode SmolLM2 and Gemma, shown their failed code, never chose a tool
   (0/8 prompts); and ``auto`` mode ignores ``max_tokens`` for the arguments, so a call
   that rambles runs until the context is full (over 150 s). A forced call honours
   ``max_tokens``;
5. chatml-function-calling HTML-escapes the prompt and the model copies ``&#39;``: entities
   are un-escaped in the parsed arguments, and in the final text (:attr:`ToolRounds.text`);
6. arguments that do not parse are not run as ``{}``: the model is told, as a tool error;
7. a reply cut at ``max_tokens`` still says ``finish_reason="tool_calls"``: arguments that
   do not parse, or ``completion_tokens`` reaching ``max_tokens`` (per call, or bound in
   the route: ``make_call(..., max_tokens=N)``), mark it as cut short;
8. the "message" path of chatml-function-calling returns empty content: an empty plain
   answer (or used-up rounds) leads to the final request without tools.
"""

from __future__ import annotations

import copy
import html
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from retrylib.errors import ConfigError
from retrylib.extract import _get, extract_finish_reason, extract_text, extract_usage, response_cost
from retrylib.tools.session import ToolSession

_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|amp|lt|gt|quot|apos);")
_TOOL_KWARGS = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls")
_RESULT_CHARS = 4000  # of one result, in the message sent back (the record keeps it whole)

SYSTEM_TOOLS = ("You can call these tools. Call one to try your code before you answer; its "
                "result comes back in the next message.\n{tools}")
AFTER_RESULTS = ("Use these results. Call a tool again if you need to, or reply with your "
                 "final answer.")
FINAL_ASK = ("Now reply with your final answer to the original request, complete, taking the "
             "tool results into account. Do not call tools.")


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One tool call the model made, and what it gave.

    Attributes:
        round: the tool round it came in (1-based).
        name: the tool the model named.
        arguments: the parsed arguments (``None`` when they did not parse: not run).
        raw_arguments: the arguments as the model wrote them.
        text: the result (or why it was not run).
        is_error: the call failed or was not run.
        duration: seconds the tool took (0 when not run).
        error: ``None``, or ``unknown_tool``, ``bad_arguments``, ``cut_short`` (the reply hit
            ``max_tokens``), ``timeout``, ``tool_error``, ``session_error``.
        call_id: the ``tool_calls[i].id`` of the reply.
    """

    round: int
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str
    text: str
    is_error: bool
    duration: float
    error: str | None = None
    call_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ToolRounds:
    """What the tool rounds of one attempt did.

    Attributes:
        response: the final response: the answer to validate.
        text: its text, HTML entities un-escaped (``None`` when it has none).
        calls: every tool call, in order.
        requests: the requests made (tool rounds and the final one); ``extra_requests`` is
            the number beyond the one request an attempt makes anyway.
        messages: the messages sent on the final request.
        rounds: the tool rounds in which the model called a tool.
        ended: ``answered`` (a plain answer in a tool round), ``no_tool_call`` (an empty plain
            answer, then the final request), ``rounds_used`` (then the final request),
            ``no_tools`` (the session offers none: one plain request).
        tokens_in, tokens_out, cost: summed over every request that was answered.
        duration: seconds, from the first request to the final answer (or to the end).
        running: the tool whose call was in flight when the rounds ended early (a cancel
            or a timeout), else ``None``.
    """

    response: Any
    text: str | None
    calls: list[ToolCallRecord] = field(default_factory=list)
    requests: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    rounds: int = 0
    ended: Literal["answered", "no_tool_call", "rounds_used", "no_tools"] = "answered"
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    duration: float = 0.0
    running: str | None = None

    @property
    def extra_requests(self) -> int:
        return max(0, self.requests - 1)

    @property
    def tool_time(self) -> float:
        return sum(c.duration for c in self.calls)


def unescape_entities(text: str) -> str:
    """``&#39;``, ``&quot;``, ``&amp;``, ``&lt;``, ``&gt;`` (and numeric entities) back to characters."""
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), text) if "&" in text else text


def _unescape_values(value: Any) -> Any:
    if isinstance(value, str):
        return unescape_entities(value)
    if isinstance(value, list):
        return [_unescape_values(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescape_values(v) for k, v in value.items()}
    return value


def tool_calls_of(response: Any) -> list[dict[str, Any]]:
    """The reply's tool calls as plain dicts ``{"id", "name", "arguments"}`` (arguments raw).

    Reads ``tool_calls`` and the legacy ``function_call``, in dicts and ``ModelResponse``s.
    """
    choices = _get(response, "choices") if not isinstance(response, str) else None
    message = _get(choices[0], "message") if choices else None
    if message is None:
        return []
    out = []
    for i, tc in enumerate(_get(message, "tool_calls") or ()):
        fn = _get(tc, "function") or {}
        out.append({"id": _get(tc, "id") or f"call_{i}", "name": str(_get(fn, "name") or ""),
                    "arguments": _raw(_get(fn, "arguments"))})
    fc = _get(message, "function_call")
    if not out and fc is not None and _get(fc, "name"):
        out.append({"id": "call_0", "name": str(_get(fc, "name")), "arguments": _raw(_get(fc, "arguments"))})
    return out


def _raw(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return "" if arguments is None else json.dumps(arguments)


def _text_of(response: Any) -> str | None:
    try:
        return extract_text(response)
    except Exception:  # a tool-call reply has content None; any other shape: no text
        return None


def parse_arguments(raw: str, *, cut: bool) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """``(arguments, error kind, message)``: the parsed, un-escaped dict, or why not."""
    shown = raw if len(raw) <= 300 else raw[:300] + "..."
    try:
        # strict=False: llama.cpp's JSON grammar lets raw newlines into strings, which
        # json.loads refuses by default; code arrives that way.
        value = json.loads(raw, strict=False) if raw.strip() else {}
    except ValueError as exc:
        if cut:
            return None, "cut_short", (f"your tool call was cut off at max_tokens, so its arguments "
                                       f"are incomplete JSON ({exc}): {shown}. Write shorter code.")
        return None, "bad_arguments", f"the arguments are not valid JSON ({exc}): {shown}"
    if not isinstance(value, dict):
        return None, "bad_arguments", f"the arguments must be a JSON object, got: {shown}"
    return _unescape_values(value), None, None


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        head = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
        return [head, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _results_message(records: list[ToolCallRecord]) -> str:
    parts = ["Tool results:"]
    for i, r in enumerate(records, 1):
        args = json.dumps(r.arguments, ensure_ascii=False) if r.arguments is not None else r.raw_arguments
        args = args if len(args) <= 1500 else args[:1500] + "..."
        status = f"ERROR ({r.error})" if r.is_error else "ok"
        body = r.text if len(r.text) <= _RESULT_CHARS else r.text[:_RESULT_CHARS] + "\n[...]"
        parts.append(f"[{i}] {r.name}({args}) -> {status}:\n```\n{body.rstrip()}\n```")
    parts.append(AFTER_RESULTS)
    return "\n\n".join(parts)


async def run_tool_rounds(
    call: Callable[..., Awaitable[Any]],
    messages: list[dict[str, Any]],
    kwargs: Mapping[str, Any],
    session: ToolSession,
    *,
    max_rounds: int = 2,
    tool_timeout: float = 10.0,
    on_request: Callable[[dict[str, Any]], Any] | None = None,
    result_role: Literal["user", "tool"] = "user",
    unescape_html: bool = True,
    force_tool: str | bool | None = None,
    record: ToolRounds | None = None,
) -> ToolRounds:
    """Let the model call tools for up to ``max_rounds`` rounds, then get its final answer.

    Args:
        call: the route, ``await call(messages=..., **kwargs)``; returns an OpenAI dict or a
            litellm ``ModelResponse``.
        messages: the attempt's messages (not changed).
        kwargs: the attempt's call kwargs (not changed). ``tools``/``tool_choice`` are set
            here; ``response_format`` is left out of the tool rounds (a grammar would forbid
            the tool call) and kept for the final request.
        session: a started :class:`~retrylib.tools.ToolSession`.
        max_rounds: tool rounds at most (0: only the final request).
        tool_timeout: seconds per tool call.
        on_request: called (awaited if it returns an awaitable) *before* each request with
            ``{"kind": "tool_round" | "final", "round", "messages", "kwargs"}``; raise in it
            to refuse the request (a budget). The exception propagates.
        result_role: ``user`` (default; templates that drop ``role: tool`` see it) or
            ``tool`` (OpenAI tool messages, for servers that insist on them).
        unescape_html: un-escape HTML entities in :attr:`ToolRounds.text`.
        force_tool: ``None`` (default): ``tool_choice="auto"`` in every round. A tool's name,
            or ``True`` for the first tool offered: the first round forces that function
            (``{"type": "function", "function": {"name": ...}}``, which llama.cpp honours with
            ``max_tokens``), later rounds are ``auto``.
        record: the :class:`ToolRounds` to fill in (and return); the caller keeps what
            ran so far in it even when the rounds are cancelled or time out. ``None``: a
            new one.

    Returns:
        A :class:`ToolRounds` (``record`` when given).

    Raises:
        ConfigError: ``max_rounds`` < 0, ``tool_timeout`` <= 0, ``result_role`` unknown, or
            ``force_tool`` names a tool the session does not offer.
        Whatever ``call`` or ``on_request`` raises (a transport error is the loop's to
        classify); the rounds made so far are attached to it as ``exc.tool_rounds``.
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ConfigError(f"max_rounds must be an integer >= 0, got {max_rounds!r}")
    if not isinstance(tool_timeout, int | float) or not tool_timeout > 0:
        raise ConfigError(f"tool_timeout must be a number of seconds > 0, got {tool_timeout!r}")
    if result_role not in ("user", "tool"):
        raise ConfigError(f"result_role must be 'user' or 'tool', got {result_role!r}")
    t0 = time.monotonic()
    base = {k: v for k, v in copy.deepcopy(dict(kwargs)).items() if k not in _TOOL_KWARGS}
    # A bound set in the route (make_call's defaults) cuts the reply as surely as a kwarg.
    bound = getattr(call, "defaults", None)
    defaults: Mapping[str, Any] = bound if isinstance(bound, Mapping) else {}
    max_tokens = (base.get("max_tokens") or base.get("max_completion_tokens")
                  or defaults.get("max_tokens") or defaults.get("max_completion_tokens"))
    tools = session.openai_tools()
    forced = _forced_name(force_tool, [t["function"]["name"] for t in tools])
    out = record if record is not None else ToolRounds(response=None, text=None)
    convo = copy.deepcopy(list(messages))

    async def send(kind: str, rnd: int, msgs: list[dict[str, Any]], kw: dict[str, Any]) -> Any:
        if on_request is not None:
            ack = on_request({"kind": kind, "round": rnd, "messages": msgs, "kwargs": kw})
            if inspect.isawaitable(ack):
                await ack
        out.requests += 1
        response = await call(messages=msgs, **kw)
        tin, tout = extract_usage(response)
        out.tokens_in += tin
        out.tokens_out += tout
        out.cost += response_cost(response)
        return response

    def finish(response: Any, msgs: list[dict[str, Any]], ended: Any) -> ToolRounds:
        out.response, out.messages, out.ended = response, msgs, ended
        text = _text_of(response)
        out.text = unescape_entities(text) if (text is not None and unescape_html) else text
        out.duration = time.monotonic() - t0
        return out

    try:
        if not tools:
            return finish(await send("final", 0, convo, base), convo, "no_tools")
        system = SYSTEM_TOOLS.format(tools=session.describe())
        round_kw = {k: v for k, v in base.items() if k != "response_format"}
        round_kw["tools"] = tools
        ended: Any = "rounds_used"
        for rnd in range(1, max_rounds + 1):
            msgs = _with_system(convo, system)
            choice: Any = "auto" if rnd > 1 or forced is None else {
                "type": "function", "function": {"name": forced}}
            response = await send("tool_round", rnd, msgs, {**copy.deepcopy(round_kw),
                                                            "tool_choice": choice})
            calls = tool_calls_of(response)
            if not calls:
                text = _text_of(response)
                if text and text.strip():
                    return finish(response, msgs, "answered")
                ended = "no_tool_call"
                break
            out.rounds = rnd
            _, tout = extract_usage(response)
            cut = extract_finish_reason(response) == "length" or bool(max_tokens and tout >= max_tokens)
            records = []
            for tc in calls:  # each one recorded as it ends: a cancel keeps those that ran
                out.running = tc["name"]
                records.append(await _run_one(session, tc, rnd, cut, tool_timeout))
                out.running = None
                out.calls.append(records[-1])
            convo.append({"role": "assistant", "content": "", "tool_calls": [
                {"id": tc["id"], "type": "function",
                 "function": {"name": tc["name"], "arguments": tc["arguments"]}} for tc in calls]})
            if result_role == "tool":
                convo += [{"role": "tool", "tool_call_id": r.call_id, "content": r.text} for r in records]
            else:
                convo.append({"role": "user", "content": _results_message(records)})
        final_msgs = [*convo, {"role": "user", "content": FINAL_ASK}]
        return finish(await send("final", out.rounds + 1, final_msgs, base), final_msgs, ended)
    except BaseException as exc:  # a cancel or a timeout too: the record says how far it got
        out.duration = time.monotonic() - t0
        try:
            exc.tool_rounds = out  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass
        raise


def _forced_name(force: str | bool | None, names: list[str]) -> str | None:
    if force is None or force is False:
        return None
    if force is True:
        return names[0] if names else None
    if force not in names:
        raise ConfigError(f"force_tool {force!r} is not a tool of the session (tools: "
                          f"{', '.join(names) or 'none'})")
    return force


async def _run_one(session: ToolSession, tc: dict[str, Any], rnd: int, cut: bool,
                   timeout: float) -> ToolCallRecord:
    # Arguments that parse are complete JSON even when the reply hit max_tokens.
    args, kind, problem = parse_arguments(tc["arguments"], cut=cut)
    if args is None:
        return ToolCallRecord(rnd, tc["name"], None, tc["arguments"], problem or "", True, 0.0,
                              kind, tc["id"])
    r = await session.call(tc["name"], args, timeout=timeout)
    return ToolCallRecord(rnd, tc["name"], args, tc["arguments"], r.text, r.is_error, r.duration,
                          r.error, tc["id"])
