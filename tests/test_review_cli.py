"""``retrylib review``: the reviewer's commands, on a store holding real cases.

The commands run through ``retrylib.cli.main`` in process (what they print is read with
capsys); one test runs the installed console script as a real process, as a reviewer would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retrylib import HumanReviewNeededError, RetryConfig, retry_with_validation
from retrylib import validators as V
from retrylib.cli import main
from retrylib.review import SQLiteReviewStore, resume
from retrylib.testing import ScriptedCall

PROMPT = [{"role": "user", "content": "Give me a JSON object with a name."}]
GOOD = '{"name": "Ann"}'
EXE = Path(sys.executable).with_name("retrylib")


pytestmark = pytest.mark.usefixtures("no_sleeps")


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "review.db")


async def new_case(db: str, answers=("not json", "still not json")) -> str:
    """A real call into the human stage, queued in ``db``; its case id."""
    cfg = RetryConfig(max_attempts=4, max_attempts_before_human=len(answers), review_store=db)
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(ScriptedCall(list(answers)), PROMPT,
                                    [V.JsonObject(), V.FieldsPresent(["name"])], cfg)
    return info.value.case_id


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_list_is_a_table_of_open_cases(db, capsys):
    """list prints a header, a rule and one row per open case; --all shows the others too."""
    first, second = await new_case(db), await new_case(db)
    SQLiteReviewStore(db).update_status(second, "rejected")
    code, out, _ = run(capsys, "review", "list", "--store", db)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["id", "status", "created", "model", "attempts", "reason"]
    assert set(lines[1]) <= {"-", " "} and len(lines) == 3 and lines[2].startswith(first)
    assert "open" in lines[2] and "2 answers failed validation" in lines[2]
    _, out, _ = run(capsys, "review", "list", "--store", db, "--all")
    assert len(out.splitlines()) == 4 and second in out
    _, out, _ = run(capsys, "review", "list", "--store", db, "--status", "rejected")
    assert second in out and first not in out
    empty = db + ".empty"
    SQLiteReviewStore(empty)
    assert run(capsys, "review", "list", "--store", empty)[1].strip() == "no review cases"


async def test_show_prints_the_conversation_attempts_and_errors(db, capsys):
    """show prints the case's facts, each message labelled, the attempts table, the errors
    numbered, and how to decide it."""
    cid = await new_case(db)
    code, out, _ = run(capsys, "review", "show", cid, "--store", db)
    assert code == 0 and out.startswith(f"case {cid}  [open]  round 1")
    assert "  [user]\n    Give me a JSON object with a name." in out
    assert "  [assistant, attempt 1]\n    not json" in out
    assert "  [assistant, attempt 2, under review]\n    still not json" in out
    assert "Your previous answer did not pass validation." in out
    attempts = out.split("Attempts:\n")[1].split("\n\n")[0].splitlines()
    assert attempts[0].split()[:3] == ["number", "stage", "outcome"] and len(attempts) == 4
    assert "Validation errors of the last answer:\n  1. invalid JSON in the answer" in out
    assert f"Decide: retrylib review resolve {cid} --answer FILE" in out


async def test_resolve_from_a_file_then_resume(db, capsys, tmp_path):
    """resolve --answer FILE records the answer and who; a wrong answer is refused (exit 2,
    the errors on stderr) and leaves the case open."""
    cid = await new_case(db)
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_text('{"nom": "Ann"}')
    good.write_text(GOOD)
    code, _, err = run(capsys, "review", "resolve", cid, "--answer", str(bad), "--store", db)
    assert code == 2 and "fails validation: missing field `name`" in err
    assert SQLiteReviewStore(db).get(cid).status == "open"
    code, out, _ = run(capsys, "review", "resolve", cid, "--answer", str(good), "--store", db,
                       "--by", "alice")
    assert code == 0 and f"case {cid} is resolved (by alice)" in out
    assert (await resume(cid, store=db)).content == GOOD
    _, out, _ = run(capsys, "review", "show", cid, "--store", db)
    assert "resolve by alice answer '{\"name\": \"Ann\"}'" in out and "[closed]" in out


async def test_approve_reject_and_retry(db, capsys, monkeypatch):
    """approve, reject --reason and retry --guidance --attempts each record the decision;
    the store defaults to $RETRYLIB_REVIEW_STORE."""
    monkeypatch.setenv("RETRYLIB_REVIEW_STORE", db)
    a, b, c = await new_case(db), await new_case(db), await new_case(db)
    assert run(capsys, "review", "approve", a, "--note", "ok as is")[0] == 0
    assert run(capsys, "review", "reject", b, "--reason", "bad request", "--by", "bo")[0] == 0
    code, out, _ = run(capsys, "review", "retry", c, "--guidance", "Use the key name.",
                       "--attempts", "3")
    assert code == 0 and "is retry" in out
    store = SQLiteReviewStore(db)
    assert [store.get(x).status for x in (a, b, c)] == ["approved", "rejected", "retry"]
    assert store.get(b).reviews[-1] == {**store.get(b).reviews[-1], "by": "bo", "reason": "bad request"}
    assert store.get(c).reviews[-1]["attempts"] == 3
    code, _, err = run(capsys, "review", "approve", b)
    assert code == 2 and "was rejected by bo" in err


async def test_bad_input_exits_2_with_the_reason(db, capsys, tmp_path, monkeypatch):
    """An unknown id, a missing store, a corrupt file, a missing answer file: exit 2, named."""
    cid = await new_case(db)
    code, _, err = run(capsys, "review", "show", "nope", "--store", db)
    assert code == 2 and f"no review case 'nope' in {db}" in err
    code, _, err = run(capsys, "review", "list", "--store", str(tmp_path / "typo.db"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "typo.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all " * 50)
    code, _, err = run(capsys, "review", "list", "--store", str(junk))
    assert code == 2 and "not a SQLite database or is damaged" in err
    code, _, err = run(capsys, "review", "resolve", cid, "--answer", str(tmp_path / "none.txt"),
                       "--store", db)
    assert code == 2 and "none.txt" in err and "No such file" in err
    monkeypatch.delenv("RETRYLIB_REVIEW_STORE", raising=False)
    code, _, err = run(capsys, "review", "list")
    assert code == 2 and "RETRYLIB_REVIEW_STORE" in err


def test_console_script_as_a_real_process(db):
    """`retrylib review list` and `show` work as a real process, in a plain terminal."""
    cid = asyncio.run(new_case(db))
    exe = str(EXE) if EXE.exists() else shutil.which("retrylib")
    cmd = [exe] if exe else [sys.executable, "-m", "retrylib.cli"]
    out = subprocess.run([*cmd, "review", "list", "--store", db], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and cid in out.stdout, out.stderr
    out = subprocess.run([*cmd, "review", "show", cid, "--store", db], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "Validation errors of the last answer" in out.stdout


async def test_resume_prints_the_result_of_a_decided_case(db, capsys):
    """resume ID continues a resolved case from the store alone (nothing is sent) and prints
    the attempts and the answer; resuming it again is refused (exit 2, the case is closed)."""
    cid = await new_case(db)
    case_answer = Path(db).with_name("answer.json")
    case_answer.write_text(GOOD)
    assert run(capsys, "review", "resolve", cid, "--answer", str(case_answer), "--store", db)[0] == 0
    code, out, err = await asyncio.to_thread(run, capsys, "review", "resume", cid, "--store", db,
                                             "--by", "carol")
    assert code == 0, err
    table, payload = out.split("\n{", 1)
    assert json.loads("{" + payload)["content"] == GOOD
    rows = table.splitlines()
    assert rows[0].split()[:3] == ["number", "stage", "outcome"] and rows[-1].split()[:3] == ["3", "human", "ok"]
    assert SQLiteReviewStore(db).get(cid).status == "closed"
    code, _, err = await asyncio.to_thread(run, capsys, "review", "resume", cid, "--store", db)
    assert code == 2 and cid in err and "closed" in err


async def test_resume_of_a_call_the_store_cannot_rebuild_names_the_fix(db, capsys):
    """A retried case made with a custom call (a ScriptedCall) cannot be resumed from the
    command line: exit 2, and the message says to pass call= in Python."""
    cid = await new_case(db)
    assert run(capsys, "review", "retry", cid, "--guidance", "Use the key name.", "--store", db)[0] == 0
    code, _, err = await asyncio.to_thread(run, capsys, "review", "resume", cid, "--store", db)
    assert code == 2 and "pass call= to resume it" in err and cid in err
    assert SQLiteReviewStore(db).get(cid).status == "retry"  # nothing was taken over
