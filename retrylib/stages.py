"""The escalation ladder as objects: one class per stage, one small interface.

A stage says what an attempt sends (:meth:`Stage.apply` edits the outgoing
:class:`Request`) and whether the history starts over when the stage begins
(``fresh_start``, honoured with ``escalation_history="fresh"``). Stages accumulate: the
attempt of ladder entry *i* applies entries 1..i in order, so the grammar of the
constrained stage stays on in the fallback and tool stages. A ``terminal`` stage makes no
call: reaching it ends the call (the human stage raises ``HumanReviewNeededError``).

The ladder is a sequence of ``(failures, stage)`` entries, chosen by how many answers
failed validation. ``RetryConfig``'s threshold fields are the short form of the built-in
ladder; ``RetryConfig(stages=[(2, MyStage())])`` adds a stage of your own, no edit to the
loop needed::

    class Cooler(Stage):
        name = "cooler"

        def apply(self, request, call):
            request.kwargs["temperature"] = 0.0
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from retrylib.constrained import bound_runaways, response_format_for

if TYPE_CHECKING:
    from retrylib.loop import _Loop


@dataclass(slots=True)
class Request:
    """One attempt's outgoing call, as the stages shape it.

    Attributes:
        messages: what is sent.
        kwargs: the call's keyword arguments (``model``, ``response_format``, ...).
        constrained: the request asks for schema-constrained output.
        grammar: retrylib itself put the schema in (so a route that refuses it can be
            answered by dropping it).
        mcp: ``mcp_config`` was added.
        tool_suggested: the messages carry the debug-tool suggestion.
        tools: a tool session to run the model's tool calls through (the tool stage's
            execute mode), else ``None``.
        notes: what the stages decided on the way; joined into the attempt's ``note``.
        tool_calls: the tool calls that ran while the attempt was made (the tool stage).
        text: the answer's text when the tool stage read it (HTML entities un-escaped).
    """

    messages: list[dict[str, Any]]
    kwargs: dict[str, Any]
    constrained: bool = False
    grammar: bool = False
    mcp: bool = False
    tool_suggested: bool = False
    tools: Any = None
    notes: list[str] = field(default_factory=list)
    tool_calls: tuple[dict[str, Any], ...] = ()
    text: str | None = None


class Stage:
    """One rung of the ladder. Subclass it and override :meth:`apply`.

    Attributes:
        name: shown in each attempt's ``stage`` and in ``metrics["stage_reached"]``.
        fresh_start: with ``escalation_history="fresh"``, the stage's first attempt gets the
            caller's messages only.
        terminal: reaching the stage ends the call (no request is made).
        suggests_tool: the re-ask names the debugging tool from this stage on.
    """

    name: ClassVar[str] = "custom"
    fresh_start: ClassVar[bool] = False
    terminal: ClassVar[bool] = False
    suggests_tool: ClassVar[bool] = False

    def apply(self, request: Request, call: _Loop) -> None:
        """Edit ``request`` for an attempt on (or after) this stage. ``call`` is the call's state."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normal(Stage):
    """The first stage: the prompt, plus the feedback on earlier failures."""

    name = "normal"


class Constrained(Stage):
    """Ask for schema-constrained output (the validators' JSON schema, made grammar-safe).

    The runaway guard: once an answer of the call was cut at the token limit, the schema
    sent bounds every list and free string, and the depth of a recursive model
    (``runaway_max_items``/``runaway_max_length``/``runaway_max_depth``,
    :func:`~retrylib.constrained.bound_runaways`), so the grammar makes the model close
    them instead of running into ``max_tokens`` again.
    """

    name = "constrained"
    fresh_start = True

    def apply(self, request: Request, call: _Loop) -> None:
        if call.schema is not None and call.constrained_off is None:
            c, schema = call.config, call.schema
            cut = next((a.number for a in call.attempts if a.finish_reason == "length"), None)
            if cut is not None and (c.runaway_max_items or c.runaway_max_length
                                    or c.runaway_max_depth):
                schema, added = bound_runaways(schema, c.runaway_max_items, c.runaway_max_length,
                                               c.runaway_max_depth)
                if added:
                    request.notes.append(f"runaway guard: {'; '.join(added)} (attempt {cut}'s "
                                         "answer was cut at the token limit)")
            request.kwargs["response_format"] = response_format_for(schema, c.constrained_format)
            request.constrained = request.grammar = True
            if call.schema_dropped:
                request.notes.append("left to the validators: " + "; ".join(call.schema_dropped))
        else:
            request.notes.append(f"constrained stage skipped: {call.constrained_off}")


class Fallback(Stage):
    """Send the attempt to the next model of ``fallback_models``."""

    name = "fallback"
    fresh_start = True

    def apply(self, request: Request, call: _Loop) -> None:
        call.apply_fallback_model(request.kwargs)


class Tool(Stage):
    """Bring in the debugging tool: its suggestion, its MCP config, and (in ``execute``
    mode) its tools, run for the model through an MCP session."""

    name = "tool"
    suggests_tool = True

    def apply(self, request: Request, call: _Loop) -> None:
        c = call.config
        request.tool_suggested = bool(c.debug_tool_name) and bool(call.history)
        if c.debug_tool_mcp_config is None:
            return
        if c.tool_mode in ("inject", "both"):
            request.kwargs["mcp_config"] = copy.deepcopy(c.debug_tool_mcp_config)
            request.mcp = True
        if c.tool_mode in ("execute", "both"):
            request.tools = call.tool_session


class Human(Stage):
    """No call: the case goes to a person (``HumanReviewNeededError``, the review queue)."""

    name = "human"
    terminal = True


BUILT_IN: dict[str, type[Stage]] = {"normal": Normal, "constrained": Constrained,
                                    "fallback": Fallback, "tool": Tool, "human": Human}


@dataclass(frozen=True, slots=True)
class Ladder:
    """The stages of a call, in order, each with the failure count that starts it.

    Built once per config (the cached property ``RetryConfig.stage_ladder``); entry 0 is
    always ``Normal``.
    """

    thresholds: tuple[int, ...]
    stages: tuple[Stage, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def index_of(self, name: str) -> int:
        """The ladder index of the stage called ``name`` (0 when there is none)."""
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        return 0

    def has(self, kind: type[Stage]) -> bool:
        return any(isinstance(s, kind) for s in self.stages)
