"""OpenTelemetry: one span per call, one child span per attempt (the ``[otel]`` extra).

``RetryConfig(hooks=[OtelHook()])`` (or ``retrylib.hooks.install(OtelHook())``) emits, for
each call, a span ``retry <model>`` and, under it, one span ``chat <model>`` per attempt,
with the start and end times the attempt record holds. Both are ``SpanKind.CLIENT`` (a
request to a model server, as the GenAI conventions say). Attributes follow the
OpenTelemetry GenAI semantic conventions where they apply, plus retrylib's own:

=====================================  =================================================
``gen_ai.operation.name``              ``chat``
``gen_ai.provider.name``               from the model string's litellm prefix, named as
                                       the conventions name it (``openai/…``: ``openai``,
                                       ``vertex_ai/…``: ``gcp.vertex_ai``, another prefix
                                       as is); the ``proxy/`` route speaks the OpenAI
                                       API: ``openai``; left out for a bare model name
``gen_ai.request.model``               the model the attempt asked for
``gen_ai.usage.input_tokens``          tokens in (attempt spans)
``gen_ai.usage.output_tokens``         tokens out
``gen_ai.response.finish_reasons``     ``[finish_reason]`` when the response gave one
``error.type``                         the transport error's class, when there was one
``retrylib.attempt``                   the attempt's number
``retrylib.stage``                     ``normal``, ``constrained``, ``fallback``, ...
``retrylib.outcome``                   ``ok``, ``validation_failed``, ``transport_error``
``retrylib.delay.scheduled``           the backoff delay planned before the attempt
``retrylib.delay.slept``               the delay slept before it
``retrylib.validation.error_count``    how many validation errors the answer had
``retrylib.budget.level``              the retry budget's level, with a budget
``retrylib.breaker.state``             the model's breaker, with a breaker
=====================================  =================================================

The call span carries ``retrylib.attempts``, ``retrylib.outcome`` (``ok`` or the error
class) and the summed token counts; a failed call's span has status ERROR.
"""

from __future__ import annotations

from typing import Any

from retrylib._extras import require
from retrylib.hooks import AttemptDetails, CallInfo

_NS = 1_000_000_000

# litellm's provider prefixes whose GenAI-conventions name differs (or that are aliases).
_PROVIDERS = {
    "proxy": "openai", "text-completion-openai": "openai", "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference", "bedrock": "aws.bedrock", "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini", "cohere_chat": "cohere", "watsonx": "ibm.watsonx.ai",
    "xai": "x_ai", "mistral": "mistral_ai",
}


def provider_name(model: str | None) -> str | None:
    """``gen_ai.provider.name`` for a model string (``openai/smollm2`` -> ``openai``).

    Returns:
        The conventions' name for the model's litellm prefix (the prefix itself when they
        have none), or ``None`` for a model name without a prefix.
    """
    if not model or "/" not in model:
        return None
    prefix = model.split("/", 1)[0]
    return _PROVIDERS.get(prefix, prefix)


class OtelHook:
    """Emit OpenTelemetry spans for calls and attempts.

    Args:
        tracer: an ``opentelemetry.trace.Tracer``; default the global provider's tracer
            ``"retrylib"``.

    Raises:
        MissingExtraError: ``opentelemetry-api`` is not installed (``pip install 'retrylib[otel]'``).
    """

    def __init__(self, tracer: Any = None):
        trace = require("opentelemetry.trace", "retrylib.otel.OtelHook")
        self._trace = trace
        self.tracer = tracer or trace.get_tracer("retrylib")
        self._calls: dict[int, tuple[Any, str | None]] = {}  # call_id -> (span, provider)

    def call_started(self, call: CallInfo) -> None:
        start = int(call.started * _NS)
        provider = provider_name(call.model)
        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat",
                                 "retrylib.max_attempts": call.max_attempts}
        if call.model:
            attrs["gen_ai.request.model"] = call.model
        if provider:
            attrs["gen_ai.provider.name"] = provider
        span = self.tracer.start_span(f"retry {call.model or 'call'}", start_time=start,
                                      kind=self._trace.SpanKind.CLIENT, attributes=attrs)
        self._calls[call.call_id] = (span, provider)

    def attempt_ended(self, d: AttemptDetails) -> None:
        entry = self._calls.get(d.call_id)
        if entry is None:
            return
        parent, call_provider = entry
        ctx = self._trace.set_span_in_context(parent)
        start = int(d.timestamp * _NS)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": d.tokens_in,
            "gen_ai.usage.output_tokens": d.tokens_out,
            "retrylib.attempt": d.number,
            "retrylib.stage": d.stage,
            "retrylib.outcome": d.outcome,
            "retrylib.delay.scheduled": d.scheduled_delay,
            "retrylib.delay.slept": d.slept,
            "retrylib.validation.error_count": len(d.validation_errors),
        }
        if d.model:
            attrs["gen_ai.request.model"] = d.model
        provider = provider_name(d.model) or call_provider  # a fallback model may be another's
        if provider:
            attrs["gen_ai.provider.name"] = provider
        if d.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [d.finish_reason]
        if d.error_type:
            attrs["error.type"] = d.error_type
        if d.status_code is not None:
            attrs["http.response.status_code"] = d.status_code
        if d.budget_level is not None:
            attrs["retrylib.budget.level"] = d.budget_level
        if d.breaker_state is not None:
            attrs["retrylib.breaker.state"] = d.breaker_state
        span = self.tracer.start_span(f"chat {d.model or 'model'}", context=ctx,
                                      kind=self._trace.SpanKind.CLIENT, start_time=start,
                                      attributes=attrs)
        if d.outcome == "transport_error":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, d.error_type or ""))
        span.end(end_time=start + int((d.end - d.start) * _NS))

    def call_ended(self, call: CallInfo, outcome: Any) -> None:
        entry = self._calls.pop(call.call_id, None)
        if entry is None:
            return
        span, _ = entry
        attempts = getattr(outcome, "attempts", None) or []
        span.set_attribute("retrylib.attempts", len(attempts))
        span.set_attribute("gen_ai.usage.input_tokens", sum(a.tokens_in for a in attempts))
        span.set_attribute("gen_ai.usage.output_tokens", sum(a.tokens_out for a in attempts))
        failed = isinstance(outcome, BaseException) or hasattr(outcome, "exception")
        name = type(getattr(outcome, "exception", outcome)).__name__
        span.set_attribute("retrylib.outcome", name if failed else "ok")
        if failed:
            span.set_attribute("error.type", name)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, name))
        span.end()

    def __repr__(self) -> str:
        return "OtelHook()"
