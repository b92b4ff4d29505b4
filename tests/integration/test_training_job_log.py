"""A job's log read in parts (`job_log`), as a client following it over HTTP does: no
character is cut in half, and the tail shows what progress bars last drew."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.permissions import PermissionDenied, Principal
from core.training.jobs import job_log, submit_sleep_job


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_log_parts_end_on_whole_characters(db_engine, admin, settings):
    job = submit_sleep_job(db_engine, admin, 0, settings=settings)
    assert job_log(db_engine, admin, job.id, offset=0).text == ""  # no log yet
    path = Path(job.log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "Größe: 3 Hunde\nstep 1/4\rstep 4/4\nfertig ✓\n"
    path.write_bytes(text.encode())

    parts, offset = [], 0
    while True:
        chunk = job_log(db_engine, admin, job.id, offset=offset, max_bytes=3)
        if chunk.next_offset == offset:
            break
        assert chunk.offset == offset and chunk.size == len(text.encode())
        parts.append(chunk.text)
        offset = chunk.next_offset
    assert "".join(parts) == text and "\ufffd" not in "".join(parts)
    assert parts[0] == "Gr"  # "ö" is two bytes: it waits for the next part

    tail = job_log(db_engine, admin, job.id, tail=2)
    assert tail.text == "step 4/4\nfertig ✓" and tail.offset is None
    assert tail.next_offset == tail.size == len(text.encode())
    past = job_log(db_engine, admin, job.id, offset=10**6)
    assert (past.text, past.offset, past.next_offset) == ("", tail.size, tail.size)
    with pytest.raises(PermissionDenied):
        job_log(db_engine, Principal("u", "user"), job.id)
