"""Where review cases live: the :class:`ReviewStore` interface, and which store a call uses.

The interface is small (``put``, ``get``, ``list``, ``modify``; ``update_status`` on top) so
that a shared database can stand behind it later. ``modify`` is the one way to change a
case: an atomic read-modify-write, so two reviewers (or a reviewer and a resuming process)
never overwrite each other. :class:`~retrylib.review.sqlite.SQLiteReviewStore` is the
embedded default.

Which store a call uses (:func:`store_for`): a ``review_store=`` object or path given to the
call, else ``RetryConfig.review_store``, else ``$RETRYLIB_REVIEW_STORE``; none of them set
means no store: nothing is written unless asked for.
"""

from __future__ import annotations

import builtins
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrylib.review.case import Case
from retrylib.review.errors import CaseStateError, ReviewStoreError

if TYPE_CHECKING:
    from retrylib.review.sqlite import SQLiteReviewStore

ENV_VAR = "RETRYLIB_REVIEW_STORE"


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """One row of :meth:`ReviewStore.list`: what a queue listing shows, without the case body."""

    id: str
    status: str
    created: float
    updated: float
    model: str | None
    reason: str
    attempts: int
    schema: int


class ReviewStore(ABC):
    """A durable queue of review cases."""

    location = ""

    @abstractmethod
    def put(self, case: Case) -> str:
        """Write a new case; once this returns, the case is durable. Returns its id."""

    @abstractmethod
    def get(self, case_id: str) -> Case:
        """The case with this id (``CaseNotFoundError`` when there is none)."""

    @abstractmethod
    def list(self, status: str | Iterable[str] | None = None,
             limit: int | None = None) -> builtins.list[CaseSummary]:
        """The cases, oldest first, optionally only those of the given status(es)."""

    @abstractmethod
    def modify(self, case_id: str, change: Callable[[Case], None]) -> Case:
        """Apply ``change`` to the case atomically: no other writer runs in between, and if
        ``change`` raises, nothing is written. Returns the case as written."""

    def update_status(self, case_id: str, status: str, *, expect: Iterable[str] | None = None,
                      **fields: Any) -> Case:
        """Set the case's status (and other fields), if its status is one of ``expect``.

        Raises:
            CaseStateError: the case's status is not one of ``expect``.
        """
        allowed = None if expect is None else tuple(expect)

        def change(case: Case) -> None:
            if allowed is not None and case.status not in allowed:
                raise CaseStateError(f"case {case.id!r} is {case.status}, not "
                                     f"{' or '.join(allowed)}", case.id, case.status)
            case.status = status
            for k, v in fields.items():
                setattr(case, k, v)

        return self.modify(case_id, change)

    def close(self) -> None:  # noqa: B027 - optional: a store without resources has nothing to do
        """Release what the store holds (nothing, for SQLite: connections are per operation)."""

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def new_case_id() -> str:
    """A new case id: 12 hex digits (48 random bits: collisions are retried by ``put``)."""
    return uuid.uuid4().hex[:12]

def open_store(store: ReviewStore | str | os.PathLike[str] | None = None, *,
               create: bool = False) -> ReviewStore:
    """The store ``store`` names: itself, a SQLite file path, or (``None``) ``$RETRYLIB_REVIEW_STORE``.

    Args:
        store: a store, a path, or ``None``.
        create: create the file when it does not exist (the reviewer's tools do not: a typo
            must not start an empty queue).

    Raises:
        ReviewStoreError: no store given and the environment variable is not set, or the
            store cannot be opened.
    """
    from retrylib.review.sqlite import SQLiteReviewStore

    if isinstance(store, ReviewStore):
        return store
    path = store if store is not None else os.environ.get(ENV_VAR) or None
    if path is None:
        raise ReviewStoreError(f"no review store: pass one (--store PATH, store=...) or set ${ENV_VAR}")
    return SQLiteReviewStore(path, create=create)


def store_for(given: ReviewStore | str | os.PathLike[str] | None, configured: str | bool | None,
              depth: int = 0) -> SQLiteReviewStore | ReviewStore | None:
    """The store a call at the human stage writes to, or ``None`` for none.

    ``given`` (the call's ``review_store=``) wins, then ``configured``
    (``RetryConfig.review_store``: a path, or ``False`` for never), then the environment
    variable, for top-level calls only: a validator's own model call (``depth > 0``) that
    fails becomes a failed validation of the outer call, not a case.
    """
    from retrylib.review.sqlite import SQLiteReviewStore

    if given is not None:
        return open_store(given, create=True)
    if configured is False:
        return None
    if configured:
        return SQLiteReviewStore(str(configured))
    env = os.environ.get(ENV_VAR)
    return SQLiteReviewStore(env) if env and depth == 0 else None
