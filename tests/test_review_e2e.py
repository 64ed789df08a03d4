"""Human review end to end, against the embedded model through the fault proxy.

The real SmolLM2 cannot write a made-up ticket code, so its answers fail validation and the
call reaches the human stage; the case is read back from the store file, decided in code,
and resumed. The proxy's journal is what went over the wire: no request is ever repeated.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retrylib import HumanReviewNeededError, RetryConfig, make_call, retry_with_validation
from retrylib import validators as V
from retrylib.review import SQLiteReviewStore, approve, reject, resolve, resume, retry
from retrylib.review.errors import CaseStateError

ASK = [{"role": "user", "content": "Reply with our ticket code."}]
CODE = V.RegexMatch(r"^ZQX-\d{9}$", mode="fullmatch", description="a ticket code like ZQX-123456789")


async def reach_human(chaos, local_model, db) -> HumanReviewNeededError:
    call = make_call(f"openai/{local_model.model}", api_base=chaos.url, max_tokens=12)
    cfg = RetryConfig(max_attempts=4, max_attempts_before_human=2, initial_delay=0.0,
                      max_delay=0.0, review_store=db)
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, ASK, [CODE], cfg, temperature=0.0)
    return info.value


def bodies(chaos) -> list[str]:
    return [json.dumps(e["body"], sort_keys=True) for e in chaos.journal()]


async def test_real_model_case_is_stored_resolved_and_resumed(chaos, local_model, tmp_path):
    """Two real answers fail, the case is in the store file, a resolution in code resumes it
    to a result, and the wire shows the two requests only, never one twice."""
    db = str(tmp_path / "review.db")
    exc = await reach_human(chaos, local_model, db)
    case = SQLiteReviewStore(db, create=False).get(exc.case_id)  # a fresh reader of the file
    assert case.status == "open" and case.last_text == exc.last_text and len(case.attempts) == 2
    assert case.call["kind"] == "ModelCall" and case.call["defaults"]["max_tokens"] == 12
    resolve(db, exc.case_id, "ZQX-123456789", reviewer="ops")
    result = await resume(exc.case_id, store=db)
    assert result.content == "ZQX-123456789" and [a.number for a in result.attempts] == [1, 2, 3]
    assert [a.stage for a in result.attempts][-1] == "human"
    sent = bodies(chaos)
    assert len(sent) == 2 and len(set(sent)) == 2


async def test_real_model_case_retried_with_guidance_on_the_wire(chaos, local_model, tmp_path):
    """A retried case sends one new request, rebuilt from the case alone (no call= given):
    the conversation so far plus the guidance; attempt numbers go on."""
    db = str(tmp_path / "review.db")
    chaos.set_plan(["pass", "pass", "reply:ZQX-000000001"])  # the third answer is scripted
    exc = await reach_human(chaos, local_model, db)
    retry(db, exc.case_id, "The code is ZQX-000000001.", attempts=1)
    result = await resume(exc.case_id, store=db)
    assert result.content == "ZQX-000000001" and result.accepted_attempt == 3
    journal = chaos.journal()
    sent = bodies(chaos)
    assert len(sent) == 3 and len(set(sent)) == 3
    second, third = journal[1]["body"]["messages"], journal[2]["body"]["messages"]
    assert third[: len(second)] == second and third[len(second)]["role"] == "assistant"
    assert "The code is ZQX-000000001." in third[-1]["content"]
    assert journal[2]["body"]["max_tokens"] == 12 and journal[2]["body"]["temperature"] == 0.0


async def test_real_model_case_approved_and_rejected(chaos, local_model, tmp_path):
    """An approved case resumes to the model's last real answer (its errors as warnings) with
    no new request; a rejected one cannot be resumed and sends nothing either."""
    db = str(tmp_path / "review.db")
    exc = await reach_human(chaos, local_model, db)
    approve(db, exc.case_id, reviewer="ops")
    result = await resume(exc.case_id, store=db)
    assert result.content == exc.last_text and result.warnings
    assert len(chaos.journal()) == 2  # the approval re-sent nothing
    chaos.clear()
    other = await reach_human(chaos, local_model, str(tmp_path / "other.db"))
    reject(str(tmp_path / "other.db"), other.case_id, "not worth a code", reviewer="ops")
    with pytest.raises(CaseStateError):
        await resume(other.case_id, store=str(tmp_path / "other.db"))
    assert len(chaos.journal()) == 2


async def test_real_model_case_retried_and_resumed_from_the_command_line(chaos, local_model,
                                                                         tmp_path):
    """The reviewer's whole path as commands, as a real process: ``review retry`` then
    ``review resume``, which rebuilds the route from the case and sends one new request."""
    db = str(tmp_path / "review.db")
    chaos.set_plan(["pass", "pass", "reply:ZQX-000000002"])
    exc = await reach_human(chaos, local_model, db)
    exe = shutil.which("retrylib", path=str(Path(sys.executable).parent)) or shutil.which("retrylib")
    cmd = [exe] if exe else [sys.executable, "-m", "retrylib.cli"]
    done = await asyncio.to_thread(
        subprocess.run, [*cmd, "review", "retry", exc.case_id, "--guidance",
                         "The code is ZQX-000000002.", "--attempts", "1", "--store", db],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = await asyncio.to_thread(
        subprocess.run, [*cmd, "review", "resume", exc.case_id, "--store", db, "--by", "ops"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("\n{") + 1:])["content"] == "ZQX-000000002"
    sent = bodies(chaos)
    assert len(sent) == 3 and len(set(sent)) == 3
    assert "The code is ZQX-000000002." in chaos.journal()[2]["body"]["messages"][-1]["content"]
    assert SQLiteReviewStore(db).get(exc.case_id).status == "closed"
