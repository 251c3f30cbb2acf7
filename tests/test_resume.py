"""The finished-case record of folder prediction (paresseg_jax.infer.resume), without models."""

import json
import os

import pytest

from paresseg_jax.data.layouts import CaseEntry
from paresseg_jax.errors import PareSegError
from paresseg_jax.infer import resume


def _case(tmp_path, case_id):
    image = tmp_path / f"{case_id}_pv.nii.gz"
    image.write_bytes(b"image")
    output = tmp_path / "out" / f"{case_id}.nii.gz"
    output.parent.mkdir(exist_ok=True)
    output.write_bytes(b"labels of " + case_id.encode())
    return CaseEntry(case_id, {"pv": image}), {"case_id": case_id, "files": {"labels": str(output)}}


def test_a_torn_last_line_is_ignored_and_a_damaged_one_refused(tmp_path):
    entry, record = _case(tmp_path, "a")
    keys = {"a": resume.case_key("run", entry)}
    path = resume.record_path(tmp_path / "out")
    resume.append(path, keys["a"], record)
    with open(path, "a") as f:
        f.write('{"key": "cut sh')  # a writer killed mid-line
    assert resume.finished(tmp_path / "out", keys) == {"a": record}
    with open(path, "a") as f:
        f.write("\n" + json.dumps({"key": "x", "outputs": {}, "record": {"case_id": "b"}}) + "\n")
    with pytest.raises(PareSegError, match=r"finished.jsonl: line 2 is damaged"):
        resume.finished(tmp_path / "out", keys)


def test_a_changed_input_or_run_gives_another_key(tmp_path):
    entry, _ = _case(tmp_path, "a")
    key = resume.case_key("run", entry)
    assert resume.case_key("run", entry) == key and resume.case_key("other run", entry) != key
    stat = os.stat(entry.phases["pv"])
    os.utime(entry.phases["pv"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the image replaced
    assert resume.case_key("run", entry) != key


def test_parts_cover_the_cases_once():
    entries = [CaseEntry(f"case_{k}", {}) for k in (3, 0, 4, 1, 2)]
    parts = [[e.case_id for e in resume.part_of(entries, 2, k)] for k in (0, 1)]
    assert parts == [["case_0", "case_2", "case_4"], ["case_1", "case_3"]]
    with pytest.raises(PareSegError, match="part 0 of 0"):
        resume.part_of(entries, 0, 0)
