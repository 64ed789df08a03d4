"""Human review that a human can do: a durable queue, reviewer tools, and resuming the call.

When a call reaches the human stage (``max_attempts_before_human``) and a review store is
configured, its case is written to the store *before* ``HumanReviewNeededError`` is raised,
and the error carries ``case_id``. A reviewer lists, reads and decides cases
(``retrylib review list|show|resolve|approve|reject|retry``, or the functions below), and
:func:`resume` continues the call from where it stopped::

    from retrylib import RetryConfig, retry_with_validation
    from retrylib.review import resume, resolve

    try:
        await retry_with_validation(call, messages, validators,
                                    RetryConfig(max_attempts_before_human=3, review_store="review.db"))
    except HumanReviewNeededError as exc:
        case_id = exc.case_id                     # durable: survives this process

    resolve("review.db", case_id, '{"name": "Ann"}', reviewer="alice")   # or the CLI
    result = await resume(case_id, store="review.db", call=call)

The store is off unless asked for: ``RetryConfig(review_store=PATH)``, a
``review_store=`` argument (a path or a :class:`ReviewStore`), or ``$RETRYLIB_REVIEW_STORE``
(top-level calls only; ``review_store=False`` opts a config out).
"""

from retrylib.review.actions import approve, reject, resolve, retry, reviewer_name
from retrylib.review.case import SCHEMA_VERSION, STATUSES, Case
from retrylib.review.errors import (
    CaseNotFoundError,
    CaseStateError,
    InvalidAnswerError,
    ReviewError,
    ReviewStoreError,
    SchemaVersionError,
    StoreCorruptError,
    StoreLockedError,
)
from retrylib.review.resume import resume, resume_sync
from retrylib.review.specs import spec_of
from retrylib.review.sqlite import SQLiteReviewStore
from retrylib.review.store import ENV_VAR, CaseSummary, ReviewStore, open_store

__all__ = [
    "ENV_VAR",
    "SCHEMA_VERSION",
    "STATUSES",
    "Case",
    "CaseNotFoundError",
    "CaseStateError",
    "CaseSummary",
    "InvalidAnswerError",
    "ReviewError",
    "ReviewStore",
    "ReviewStoreError",
    "SQLiteReviewStore",
    "SchemaVersionError",
    "StoreCorruptError",
    "StoreLockedError",
    "approve",
    "open_store",
    "reject",
    "resolve",
    "resume",
    "resume_sync",
    "retry",
    "reviewer_name",
    "spec_of",
]
