"""``SQLiteReviewStore``: the review queue in one SQLite file, the embedded default.

The file is in WAL mode. Every write is one ``BEGIN IMMEDIATE`` transaction with
``synchronous=FULL``: once ``put`` returns, the case survives a ``kill -9`` (and a power
cut), and a write that is cut off leaves nothing behind. Several processes may write at
once: a writer that finds the lock taken waits up to ``timeout`` seconds (SQLite's busy
timeout) before :class:`StoreLockedError`. Each operation opens its own connection, so a
store object is safe to share between threads, tasks and forked processes.

Layout: ``meta`` (``format``: the table layout, :data:`STORE_FORMAT`) and ``cases`` (one row
per case: the listing columns, and ``data``, the case document with its own ``schema``).
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from retrylib.review.case import SCHEMA_VERSION, Case
from retrylib.review.errors import (
    CaseNotFoundError,
    ReviewStoreError,
    SchemaVersionError,
    StoreCorruptError,
    StoreLockedError,
)
from retrylib.review.store import CaseSummary, ReviewStore, new_case_id

STORE_FORMAT = 1  # the layout of the tables (the case documents carry their own schema)

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    id TEXT PRIMARY KEY,
    schema INTEGER NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    model TEXT,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_by_status ON cases (status, created);
"""



class SQLiteReviewStore(ReviewStore):
    """The review queue in one SQLite file (WAL mode).

    Args:
        path: the file; created (with its tables) on first use when ``create`` is true.
        timeout: seconds a writer waits for another one's lock before ``StoreLockedError``.
        create: make the file if it does not exist (``False``: ``ReviewStoreError`` instead,
            so that a mistyped ``--store`` does not silently start an empty queue).

    Raises:
        ReviewStoreError: the file cannot be created or opened (its directory is missing...).
        StoreCorruptError: the file is not a SQLite database, or not a review store.
        SchemaVersionError: the store was laid out by a newer retrylib.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0, create: bool = True):
        self.path = Path(path)
        self.location = str(self.path)
        self.timeout = float(timeout)
        if not create and not self.path.is_file():
            raise ReviewStoreError(f"no review store at {self.location} (the file does not exist)",
                                   self.location)
        self._setup()

    def __repr__(self) -> str:
        return f"SQLiteReviewStore({self.location!r})"

    # -- connections and errors ----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE.
            con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            con.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return con

    def _error(self, exc: sqlite3.Error) -> ReviewStoreError:
        text = str(exc)
        where = self.location
        if "locked" in text or "busy" in text:
            return StoreLockedError(f"the review store {where} is locked by another process "
                                    f"(waited {self.timeout:g}s): {text}", where)
        if "malformed" in text or "not a database" in text or "corrupt" in text:
            return StoreCorruptError(f"the review store {where} is not a SQLite database or is "
                                     f"damaged ({text}); nothing was written to it", where)
        return ReviewStoreError(f"the review store {where} cannot be used: {text}", where)

    def _transaction(self, con: sqlite3.Connection, work: Callable[[], Any]) -> Any:
        """Run ``work`` inside BEGIN IMMEDIATE ... COMMIT; roll back if it raises."""
        try:
            con.execute("BEGIN IMMEDIATE")  # takes the write lock now: no upgrade deadlocks
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            out = work()
            con.execute("COMMIT")
            return out
        except BaseException as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from None
            raise

    def _setup(self) -> None:
        con = self._connect()
        try:
            try:
                # WAL: readers never block the writer, and a write cut off by a kill leaves
                # only an uncommitted tail in the -wal file, which the next open discards.
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                fmt = self._format(con) if "meta" in tables else None
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            if str(mode).lower() != "wal":
                raise ReviewStoreError(f"the review store {self.location} cannot use WAL mode "
                                       f"(got {mode!r}); put it on a local file system", self.location)
            if tables and not {"meta", "cases"} <= tables:
                raise StoreCorruptError(f"{self.location} is a SQLite database but not a review "
                                        f"store (its tables: {', '.join(sorted(tables))})", self.location)
            if fmt is None:  # a new file: lay it out (IF NOT EXISTS: another process may race)
                fmt = self._transaction(con, lambda: self._create(con))
        finally:
            con.close()
        if not fmt.isdigit() or int(fmt) > STORE_FORMAT:
            raise SchemaVersionError(f"the review store {self.location} has layout {fmt}; this "
                                     f"retrylib knows layout {STORE_FORMAT}: upgrade retrylib",
                                     self.location, int(fmt) if fmt.isdigit() else None, STORE_FORMAT)

    @staticmethod
    def _format(con: sqlite3.Connection) -> str | None:
        row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        return None if row is None else str(row[0])

    def _create(self, con: sqlite3.Connection) -> str:
        for statement in _TABLES.split(";"):  # not executescript: it would COMMIT first
            if statement.strip():
                con.execute(statement)
        fmt = self._format(con)
        if fmt is None:
            con.execute("INSERT INTO meta VALUES ('format', ?), ('created', ?)",
                        (str(STORE_FORMAT), str(time.time())))
            fmt = str(STORE_FORMAT)
        return fmt

    # -- the interface ---------------------------------------------------------------------------
    def put(self, case: Case) -> str:
        con = self._connect()

        def insert() -> bool:
            try:
                con.execute("INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(case))
            except sqlite3.IntegrityError:  # 48 random bits collided: the caller draws again
                return False
            return True

        try:
            for _ in range(5):
                if self._transaction(con, insert):
                    return case.id
                case.id = new_case_id()
            raise ReviewStoreError(f"could not find a free case id in {self.location}", self.location)
        finally:
            con.close()

    def get(self, case_id: str) -> Case:
        con = self._connect()
        try:
            try:
                row = con.execute("SELECT data FROM cases WHERE id = ?", (case_id,)).fetchone()
            except sqlite3.Error as exc:
                raise self._error(exc) from None
        finally:
            con.close()
        if row is None:
            raise CaseNotFoundError(case_id, self.location)
        return Case.from_json(row[0], self.location)

    def list(self, status: str | Iterable[str] | None = None,
             limit: int | None = None) -> builtins.list[CaseSummary]:
        wanted = [status] if isinstance(status, str) else (None if status is None else builtins.list(status))
        sql = "SELECT id, status, created, updated, model, reason, attempts, schema FROM cases"
        args: builtins.list[Any] = []
        if wanted is not None:
            sql += f" WHERE status IN ({', '.join('?' * len(wanted))})"
            args += wanted
        sql += " ORDER BY created, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        con = self._connect()
        try:
            try:
                return [CaseSummary(*r) for r in con.execute(sql, args)]
            except sqlite3.Error as exc:
                raise self._error(exc) from None
        finally:
            con.close()

    def modify(self, case_id: str, change: Callable[[Case], None]) -> Case:
        con = self._connect()
        try:
            def work() -> Case:
                row = con.execute("SELECT data FROM cases WHERE id = ?", (case_id,)).fetchone()
                if row is None:
                    raise CaseNotFoundError(case_id, self.location)
                case = Case.from_json(row[0], self.location)
                change(case)
                case.updated = time.time()
                con.execute("UPDATE cases SET schema=?, status=?, created=?, updated=?, model=?, "
                            "reason=?, attempts=?, data=? WHERE id=?", (*_row(case)[1:], case.id))
                return case

            result: Case = self._transaction(con, work)
            return result
        finally:
            con.close()

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` for a sound file, else the damage."""
        con = self._connect()
        try:
            return "; ".join(str(r[0]) for r in con.execute("PRAGMA integrity_check"))
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        finally:
            con.close()


def _row(case: Case) -> tuple[Any, ...]:
    case.schema = SCHEMA_VERSION
    return (case.id, case.schema, case.status, case.created, case.updated, case.model,
            case.reason[:2000], len(case.state.get("attempts", []))
            + len((case.outcome or {}).get("new_attempts") or []), case.to_json())
