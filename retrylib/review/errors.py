"""The review queue's exceptions: each one names the case, the store and the problem.

::

    RetrylibError
    └── ReviewError
        ├── CaseNotFoundError (KeyError)   no case with that id in the store
        ├── CaseStateError                 the case is not in a state that allows the action
        │                                  (already resolved, rejected, still open, ...)
        ├── InvalidAnswerError (ValueError) the reviewer's answer fails the call's validators
        └── ReviewStoreError               the store cannot be used
            ├── StoreLockedError           another process held the lock past the busy timeout
            ├── StoreCorruptError          not a SQLite file, damaged, or not a review store
            └── SchemaVersionError         a case (or store) of a schema this retrylib cannot read

Nothing is lost when one is raised: a store error leaves the file as it was (every write is
one transaction), and a refused action leaves the case as it was.
"""

from __future__ import annotations

from typing import Any

from retrylib.errors import RetrylibError


class ReviewError(RetrylibError):
    """The base of the review queue's errors."""


class CaseNotFoundError(ReviewError, KeyError):
    """No case with this id is in the store.

    Attributes:
        case_id: the id asked for.
        store: where it was looked for.
    """

    def __init__(self, case_id: str, store: str = ""):
        self.case_id = case_id
        self.store = store
        super().__init__(f"no review case {case_id!r} in {store or 'the store'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.case_id, self.store))


class CaseStateError(ReviewError):
    """The case's status does not allow what was asked (resolve a resolved case, resume an
    open or a rejected one...).

    Attributes:
        case_id: the case.
        status: its status when the action was refused.
    """

    def __init__(self, message: str, case_id: str = "", status: str = ""):
        super().__init__(message)
        self.case_id = case_id
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.case_id, self.status))


class InvalidAnswerError(ReviewError, ValueError):
    """The reviewer's answer does not pass the call's validators; the case stays open.

    Attributes:
        case_id: the case.
        errors: what the validators said, one line each.
    """

    def __init__(self, case_id: str, errors: tuple[str, ...] | list[str]):
        self.case_id = case_id
        self.errors = tuple(errors)
        lines = "; ".join(self.errors) or "rejected"
        super().__init__(f"the answer given for case {case_id!r} fails validation: {lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.case_id, self.errors))


class ReviewStoreError(ReviewError):
    """The review store cannot be opened, read or written.

    Attributes:
        store: the store's location (a file path for SQLite).
    """

    def __init__(self, message: str, store: str = ""):
        super().__init__(message)
        self.store = store

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.store))


class StoreLockedError(ReviewStoreError):
    """Another process held the store's write lock for longer than the busy timeout."""


class StoreCorruptError(ReviewStoreError):
    """The file is not a SQLite database, is damaged, or holds something else than cases."""


class SchemaVersionError(ReviewStoreError):
    """A case, or the store itself, was written in a schema version this retrylib cannot read.

    Attributes:
        found: the version written.
        supported: the version this retrylib reads and writes.
    """

    def __init__(self, message: str, store: str = "", found: int | None = None,
                 supported: int | None = None):
        super().__init__(message, store)
        self.found = found
        self.supported = supported

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.store, self.found, self.supported))
