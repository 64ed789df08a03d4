"""The review queue's store: round trips, atomic changes, concurrent writers, kill -9, bad files.

The cases are real: each comes from a ``retry_with_validation`` call that reached the human
stage (a :class:`ScriptedCall` serving wrong answers). Concurrency and crash tests run real
writer processes against one SQLite file and kill them with SIGKILL; what they acknowledged
(an id printed only after ``put`` returned) must be readable afterwards, and the file must
pass ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from retrylib import HumanReviewNeededError, RetryConfig, retry_with_validation
from retrylib import validators as V
from retrylib.review import (
    CaseNotFoundError,
    CaseStateError,
    InvalidAnswerError,
    ReviewStoreError,
    SchemaVersionError,
    SQLiteReviewStore,
    StoreCorruptError,
    StoreLockedError,
)
from retrylib.review import case as case_module
from retrylib.review.case import Case
from retrylib.testing import ScriptedCall

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "Give me a JSON object with a name."}]

WRITER = textwrap.dedent('''
    """Writes review cases from concurrent calls; prints each id once the store has it."""
    import asyncio, os, sys, threading
    from retrylib import HumanReviewNeededError, RetryConfig, retry_with_validation
    from retrylib import validators as V
    from retrylib.testing import ScriptedCall, set_testing

    db, ack, n, threads, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    set_testing(True)
    cfg = RetryConfig(max_attempts=2, max_attempts_before_human=2, review_store=db)
    fd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    failed = []

    async def one(i):
        call = ScriptedCall([f"not json {tag} {i} a", f"not json {tag} {i} b"])
        try:
            await retry_with_validation(call, [{"role": "user", "content": f"case {tag} {i}"}],
                                        [V.JsonObject()], cfg)
        except HumanReviewNeededError as exc:
            if not exc.case_id:
                failed.append(exc.review_error)
                return
            # One write(2) per line on an O_APPEND descriptor: a kill cannot split a line.
            os.write(fd, f"{exc.case_id} {tag} {i}\\n".encode())

    def worker(k):
        async def run():
            await asyncio.gather(*(one(i) for i in range(k, n, threads)))
        asyncio.run(run())

    print("ready", flush=True)
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(f"done {len(failed)} failed: {failed[:3]}", flush=True)
    sys.exit(1 if failed else 0)
''')


pytestmark = pytest.mark.usefixtures("no_sleeps")


async def human_case(db: Path | SQLiteReviewStore, answers=("bad one", "bad two"), **cfg) -> HumanReviewNeededError:
    """Run a call into the human stage with the store configured; return its error."""
    config = RetryConfig(**{"max_attempts": 4, "max_attempts_before_human": len(answers), **cfg})
    store = db if isinstance(db, SQLiteReviewStore) else None
    if store is None:
        config = config.replace(review_store=str(db))
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(ScriptedCall(list(answers)), PROMPT, [V.JsonObject()], config,
                                    review_store=store)
    return info.value


def writer(tmp_path: Path, db: Path, ack: Path, n: int, threads: int, tag: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    if not script.exists():
        script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(db), str(ack), str(n), str(threads), tag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def acknowledged(ack: Path) -> dict[str, tuple[str, str]]:
    if not ack.exists():
        return {}
    lines = [ln.split() for ln in ack.read_text().splitlines() if ln.strip()]
    return {cid: (tag, i) for cid, tag, i in lines}


def integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


# -- round trips -------------------------------------------------------------------------------


async def test_round_trip_keeps_every_field(tmp_path):
    """A case read back equals the case written, field for field (JSON document and attempts)."""
    db = tmp_path / "r.db"
    exc = await human_case(db)
    store = SQLiteReviewStore(db, create=False)
    case = store.get(exc.case_id)
    assert case.status == "open" and case.schema == case_module.SCHEMA_VERSION
    assert case.last_text == "bad two" and case.validation_errors == exc.validation_errors
    assert [a.to_dict() for a in case.attempts] == [a.to_dict() for a in exc.attempts]
    assert case.messages == exc.messages and case.state["base"] == PROMPT
    assert case.config == RetryConfig(**case.config).model_dump(mode="json")
    assert case.validators == [{"name": "json_object", "repr": "JsonObject()",
                                "spec": {"type": "json_object"}}]
    assert Case.from_json(case.to_json()) == case
    again = store.get(exc.case_id)
    assert again.to_json() == case.to_json()


async def test_list_filters_and_orders_oldest_first(tmp_path):
    """list() shows summaries oldest first, filtered by status, with a limit."""
    db = tmp_path / "l.db"
    ids = [(await human_case(db)).case_id for _ in range(3)]
    store = SQLiteReviewStore(db)
    store.update_status(ids[1], "rejected", expect=["open"])
    assert [c.id for c in store.list()] == ids
    assert [c.id for c in store.list("open")] == [ids[0], ids[2]]
    assert [c.id for c in store.list(["rejected"])] == [ids[1]]
    assert len(store.list(limit=2)) == 2
    row = store.list("open")[0]
    assert row.attempts == 2 and row.model == "scripted" and "failed validation" in row.reason


async def test_modify_is_all_or_nothing(tmp_path):
    """A change that raises writes nothing; update_status refuses an unexpected status."""
    db = tmp_path / "m.db"
    cid = (await human_case(db)).case_id
    store = SQLiteReviewStore(db)
    before = store.get(cid).to_json()

    def half_done(case):
        case.status = "closed"
        raise RuntimeError("the reviewer's tool crashed mid-change")

    with pytest.raises(RuntimeError):
        store.modify(cid, half_done)
    assert store.get(cid).to_json() == before
    with pytest.raises(CaseStateError, match="is open, not closed"):
        store.update_status(cid, "rejected", expect=["closed"])
    assert store.get(cid).status == "open"


async def test_hook_writes_before_raising(tmp_path):
    """The exception carries the id, and another connection reads the committed case at once."""
    db = tmp_path / "h.db"
    exc = await human_case(db)
    con = sqlite3.connect(db)  # a separate, plain connection: the commit is visible to it
    row = con.execute("SELECT status, attempts FROM cases WHERE id = ?", (exc.case_id,)).fetchone()
    con.close()
    assert row == ("open", 2)
    assert exc.review_error is None
    assert f"review case: {exc.case_id}" in exc.summary()


# -- concurrency and crashes ------------------------------------------------------------------


def test_several_processes_write_one_store(tmp_path):
    """Four processes (two threads each) write 100 cases to one file at once: all are there."""
    db, ack = tmp_path / "c.db", tmp_path / "ack.txt"
    SQLiteReviewStore(db)  # laid out once, so the writers race on cases, not on the tables
    procs = [writer(tmp_path, db, ack, 25, 2, f"p{k}") for k in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    got = acknowledged(ack)
    assert len(got) == 100 and len({v for v in got.values()}) == 100
    store = SQLiteReviewStore(db, create=False)
    assert len(store.list()) == 100
    for cid, (tag, i) in got.items():
        assert store.get(cid).last_text == f"not json {tag} {i} b"
    assert integrity(db) == "ok"


def test_sigkill_mid_write_loses_no_acknowledged_case(tmp_path):
    """SIGKILL at random points while 4 threads write: every acknowledged case of 200 is
    readable and whole afterwards, and the file passes PRAGMA integrity_check."""
    db, ack = tmp_path / "k.db", tmp_path / "ack.txt"
    rng = random.Random(20240613)
    target, rounds, killed_mid_write = 200, 0, 0
    while len(acknowledged(ack)) < target:
        before = len(acknowledged(ack))
        todo = target - before
        proc = writer(tmp_path, db, ack, todo, 4, f"r{rounds}")
        kill = rounds < 6  # then one round that runs to its end
        if kill:
            # The random point: after a random number of acknowledgements, while the other
            # threads' writes are in flight (polling the side file every millisecond).
            at = before + rng.randint(1, max(1, todo // 3))
            while len(acknowledged(ack)) < at and proc.poll() is None:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.005))
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        made = len(acknowledged(ack)) - before
        if kill and proc.returncode == -signal.SIGKILL and 0 < made < todo:
            killed_mid_write += 1
        assert kill or proc.returncode == 0, err
        rounds += 1
        assert rounds < 20, "the writers made no progress"
    got = acknowledged(ack)
    assert len(got) == target and killed_mid_write >= 4, (killed_mid_write, rounds)
    assert integrity(db) == "ok"
    store = SQLiteReviewStore(db, create=False)
    stored = {c.id for c in store.list()}
    assert set(got) <= stored  # stored may hold more: committed, killed before the print
    for cid, (tag, i) in got.items():
        case = store.get(cid)
        assert case.last_text == f"not json {tag} {i} b" and len(case.attempts) == 2


# -- bad input -------------------------------------------------------------------------------


async def test_unknown_id_names_it_and_the_store(tmp_path):
    """An unknown id is CaseNotFoundError (a KeyError) naming the id and the file."""
    db = tmp_path / "u.db"
    await human_case(db)
    with pytest.raises(CaseNotFoundError) as info:
        SQLiteReviewStore(db).get("nope")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == f"no review case 'nope' in {db}"


def test_a_file_that_is_not_a_database(tmp_path):
    """A garbage file is StoreCorruptError, and the file is left exactly as it was."""
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not sqlite\n" * 100)
    with pytest.raises(StoreCorruptError, match="not a SQLite database or is damaged"):
        SQLiteReviewStore(db)
    assert db.read_bytes() == b"this is not sqlite\n" * 100


def test_a_database_that_is_not_a_review_store(tmp_path):
    """A SQLite file of something else is refused, naming its tables; nothing is added."""
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE invoices (n INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreCorruptError, match=r"not a review store \(its tables: invoices\)"):
        SQLiteReviewStore(db)
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["invoices"]
    con.close()


async def test_a_locked_store_waits_then_says_so(tmp_path):
    """A writer blocked past the busy timeout gets StoreLockedError; the call's error says why,
    and once the lock is gone the next case is written."""
    db = tmp_path / "lock.db"
    first = await human_case(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        store = SQLiteReviewStore(db, timeout=0.2)
        t = time.monotonic()
        with pytest.raises(StoreLockedError, match="locked by another process"):
            store.update_status(first.case_id, "rejected")
        assert time.monotonic() - t >= 0.2
        exc = await human_case(store)
        assert exc.case_id is None and "StoreLockedError" in exc.review_error
        assert exc.last_text == "bad two"  # the error still holds the whole case
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    again = await human_case(SQLiteReviewStore(db, timeout=0.2))
    assert again.case_id and SQLiteReviewStore(db).get(first.case_id).status == "open"


async def test_a_case_of_an_older_schema(tmp_path, monkeypatch):
    """A case of schema 0 is SchemaVersionError naming both versions; the rest of the store
    still reads; with a migration step registered, it is upgraded on read."""
    db = tmp_path / "old.db"
    exc = await human_case(db)
    store = SQLiteReviewStore(db)
    doc = store.get(exc.case_id).to_json().replace('"schema": 1', '"schema": 0')
    doc = doc.replace('"reason":', '"why":')  # schema 0 called it "why"
    con = sqlite3.connect(db)
    con.execute("INSERT INTO cases SELECT 'old0', 0, status, created, updated, model, reason, "
                "attempts, ? FROM cases", (doc.replace(exc.case_id, "old0"),))
    con.commit()
    con.close()
    with pytest.raises(SchemaVersionError) as info:
        store.get("old0")
    assert (info.value.found, info.value.supported) == (0, 1)
    assert "review schema 0" in str(info.value) and "cannot upgrade" in str(info.value)
    assert store.get(exc.case_id).status == "open" and len(store.list()) == 2
    monkeypatch.setitem(case_module.MIGRATIONS, 0, lambda d: {**d, "reason": d.pop("why")})
    assert store.get("old0").reason == str(exc)


def test_a_store_of_a_newer_layout(tmp_path):
    """A store laid out by a newer retrylib is refused with SchemaVersionError."""
    db = tmp_path / "new.db"
    SQLiteReviewStore(db)
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    con.commit()
    con.close()
    with pytest.raises(SchemaVersionError, match="has layout 99"):
        SQLiteReviewStore(db)


async def test_a_damaged_record(tmp_path):
    """A case whose JSON was damaged is StoreCorruptError naming the store; others still read."""
    db = tmp_path / "d.db"
    good, bad = (await human_case(db)).case_id, (await human_case(db)).case_id
    con = sqlite3.connect(db)
    con.execute("UPDATE cases SET data = '{\"id\": ' WHERE id = ?", (bad,))
    con.commit()
    con.close()
    store = SQLiteReviewStore(db)
    with pytest.raises(StoreCorruptError, match="not valid JSON"):
        store.get(bad)
    assert store.get(good).status == "open"


def test_a_missing_store_is_not_created_by_readers(tmp_path):
    """create=False on a missing file is ReviewStoreError, and no file appears."""
    with pytest.raises(ReviewStoreError, match="does not exist"):
        SQLiteReviewStore(tmp_path / "typo.db", create=False)
    assert not (tmp_path / "typo.db").exists()


def test_review_errors_pickle():
    """Every review error pickles with its message and attributes."""
    errors = [CaseNotFoundError("x1", "/s.db"), CaseStateError("no", "x1", "open"),
              InvalidAnswerError("x1", ["bad", "worse"]), StoreLockedError("locked", "/s.db"),
              SchemaVersionError("old", "/s.db", 0, 1)]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and vars(back) == vars(e)


def test_env_var_is_the_default_store_for_top_level_calls(tmp_path, monkeypatch):
    """$RETRYLIB_REVIEW_STORE queues top-level calls; review_store=False opts a config out;
    with neither, nothing is written anywhere."""
    db = tmp_path / "env.db"

    async def raise_human(**cfg):
        with pytest.raises(HumanReviewNeededError) as info:
            await retry_with_validation(ScriptedCall(["bad"]), PROMPT, [V.JsonObject()],
                                        RetryConfig(max_attempts=1, max_attempts_before_human=1, **cfg))
        return info.value

    assert asyncio.run(raise_human()).case_id is None and not db.exists()
    monkeypatch.setenv("RETRYLIB_REVIEW_STORE", str(db))
    queued = asyncio.run(raise_human())
    assert queued.case_id and SQLiteReviewStore(db).get(queued.case_id).status == "open"
    assert asyncio.run(raise_human(review_store=False)).case_id is None
    assert len(SQLiteReviewStore(db).list()) == 1
