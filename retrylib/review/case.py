"""A review case: one call that reached the human stage, as plain JSON.

A case holds everything needed to show the call to a person and to continue it later:

- ``state``: the loop's own state (``_Loop.state()``): the caller's messages, the replayed
  (answer, feedback) exchanges, the failure count, the stage facts, the last answer and its
  errors and suggestions, and every attempt record. The messages of any attempt can be rebuilt
  from it; ``messages`` keeps those of the last attempt as they were sent;
- ``last_response`` (JSON-safe), ``last_text``, ``validation_errors``;
- ``validators``: one entry per validator, with its registry spec when it has one
  (:mod:`retrylib.review.specs`), else its name and repr;
- ``config``: the ``RetryConfig`` as JSON; ``call``: the route (model, defaults) when it can
  be rebuilt, with secrets left out; ``llm_config``: the declarative config of an ``llm_call``;
- ``reviews``: every review action, append-only (who, when, what); ``outcome``: how the
  call ended after it was resumed.

Versioning: every case carries ``schema``. A case of an older schema is upgraded by the
functions in ``MIGRATIONS`` (one step each); a case with no upgrade path, or of a newer
schema, is a :class:`~retrylib.review.errors.SchemaVersionError` naming both versions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from retrylib.result import Attempt
from retrylib.review.errors import SchemaVersionError, StoreCorruptError

SCHEMA_VERSION = 1
# MIGRATIONS[v] turns a schema-v case document into a schema-(v+1) one. Empty: schema 1 is
# the first. A change of the document adds a step here instead of breaking old stores.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

# The life of a case. A reviewer acts on an open case; ``resume`` continues a resolved,
# approved or retry case; a retried call that fails again comes back as open (same id).
OPEN, RESOLVED, APPROVED, RETRY, REJECTED = "open", "resolved", "approved", "retry", "rejected"
RESUMING, CLOSED, FAILED = "resuming", "closed", "failed"
STATUSES = (OPEN, RESOLVED, APPROVED, RETRY, REJECTED, RESUMING, CLOSED, FAILED)
RESUMABLE = (RESOLVED, APPROVED, RETRY)
# The action that puts a case in each awaiting status.
ACTION_OF = {RESOLVED: "resolve", APPROVED: "approve", RETRY: "retry", REJECTED: "reject"}


def plain(value: Any) -> Any:
    """``value`` as JSON-safe data: mappings, lists and scalars as they are; pydantic models
    (litellm's ``ModelResponse``) and dataclasses as their fields; anything else as its repr."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return plain(dump())
        except Exception:  # an odd model: its repr still tells the reviewer what it was
            return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    return repr(value)


def attempt_from(record: Mapping[str, Any]) -> Attempt:
    """The :class:`Attempt` of a stored record (``Attempt.to_dict()``; unknown keys are dropped)."""
    names = {f.name for f in dataclasses.fields(Attempt)}
    fields = {k: v for k, v in record.items() if k in names}
    fields["validation_errors"] = tuple(fields.get("validation_errors") or ())
    fields["tool_calls"] = tuple(fields.get("tool_calls") or ())
    return Attempt(**fields)


@dataclass
class Case:
    """One call at the human stage (see the module docstring for the fields)."""

    id: str
    reason: str
    state: dict[str, Any]
    config: dict[str, Any]
    status: str = OPEN
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    model: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    last_response: Any = None
    last_text: str | None = None
    validation_errors: list[str] = field(default_factory=list)
    validators: list[dict[str, Any]] = field(default_factory=list)
    call: dict[str, Any] = field(default_factory=dict)
    llm_config: dict[str, Any] | None = None
    context: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reviews: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    round: int = 1
    schema: int = SCHEMA_VERSION

    @property
    def attempts(self) -> list[Attempt]:
        """The attempt records, oldest first."""
        return [attempt_from(a) for a in self.state.get("attempts", [])]

    @property
    def resolution(self) -> dict[str, Any] | None:
        """The review action the case awaits resuming with (``None`` unless resolved,
        approved or marked for retry; the reason of a rejection)."""
        want = ACTION_OF.get(self.status)
        if want is None:
            return None
        return next((r for r in reversed(self.reviews) if r.get("action") == want), None)

    def conversation(self) -> list[dict[str, Any]]:
        """Every message of the call so far: the caller's, then each failed answer with its
        feedback, then the last answer (the one under review)."""
        out = [dict(m) for m in self.state.get("base", [])]
        for answer, feedback in self.state.get("history", []):
            out += [{"role": "assistant", "content": answer}, {"role": "user", "content": feedback}]
        if self.last_text is not None:
            out.append({"role": "assistant", "content": self.last_text})
        return out

    def to_json(self) -> str:
        """The case as one JSON document (what a store writes)."""
        return json.dumps(plain(dataclasses.asdict(self)), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "") -> Case:
        """The case a store read, upgraded to the current schema.

        Raises:
            StoreCorruptError: the text is not a case document.
            SchemaVersionError: a schema with no upgrade path, or a newer one.
        """
        try:
            doc = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise StoreCorruptError(f"{where or 'a case'}: the record is not valid JSON ({exc})",
                                    where) from None
        if not isinstance(doc, dict) or "id" not in doc:
            raise StoreCorruptError(f"{where or 'a case'}: the record is not a review case", where)
        doc = upgrade(doc, where)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in names})
        except TypeError as exc:
            raise StoreCorruptError(f"case {doc.get('id')!r} in {where}: {exc}", where) from None


def upgrade(doc: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``doc`` migrated step by step to :data:`SCHEMA_VERSION`.

    Raises:
        SchemaVersionError: the document is newer than this retrylib, or no step upgrades it.
    """
    found = doc.get("schema")
    case = doc.get("id")
    if not isinstance(found, int):
        raise SchemaVersionError(f"case {case!r} in {where}: no schema version", where, None,
                                 SCHEMA_VERSION)
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"case {case!r} in {where} was written with review schema {found}; this retrylib "
            f"reads schema {SCHEMA_VERSION}: upgrade retrylib to read it", where, found,
            SCHEMA_VERSION)
    while doc["schema"] < SCHEMA_VERSION:
        step = MIGRATIONS.get(doc["schema"])
        if step is None:
            raise SchemaVersionError(
                f"case {case!r} in {where} was written with review schema {doc['schema']}, "
                f"which this retrylib (schema {SCHEMA_VERSION}) cannot upgrade; read it with the "
                "retrylib that wrote it", where, found, SCHEMA_VERSION)
        doc = {**step(doc), "schema": doc["schema"] + 1}
    return doc
