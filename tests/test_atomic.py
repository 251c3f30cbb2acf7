"""Outputs whole or absent: atomic_path replaces a file or folder in one step, and a kill leaves the old one."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from paresseg_jax.atomic import atomic_path, remove_leftovers, write_text

REPO = Path(__file__).resolve().parents[1]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_is_replaced_whole_and_an_error_leaves_the_old_one(tmp_path):
    target = tmp_path / "out" / "mask.nii.gz"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent  # the writer's format survives
            tmp.write_text("half")
            raise RuntimeError("killed by a bug")
    assert target.read_text() == "old" and _names(target.parent) == ["mask.nii.gz"]
    write_text(target, "new")
    assert target.read_text() == "new" and _names(target.parent) == ["mask.nii.gz"]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "best_model"
    for version in ("1", "2"):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "model.json").write_text(version)
            (tmp / "variables").mkdir()
    assert (target / "model.json").read_text() == "2" and _names(tmp_path) == ["best_model"]


def test_outputs_open_together_in_one_folder_do_not_remove_each_other(tmp_path):
    """Writing a mask and a probability map together (or one inside another) must not take the other's
    temporary for a dead writer's leftover."""
    with atomic_path(tmp_path / "mask.nii.gz") as mask, atomic_path(tmp_path / "prob.nii.gz") as prob:
        mask.write_text("m")
        with atomic_path(prob) as inner:
            inner.write_text("p")
    assert (tmp_path / "mask.nii.gz").read_text() == "m" and (tmp_path / "prob.nii.gz").read_text() == "p"
    assert _names(tmp_path) == ["mask.nii.gz", "prob.nii.gz"]


# A writer that SIGKILLs itself at a chosen moment: inside the write, or between a folder's two renames.
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from paresseg_jax import atomic
    target, moment = Path(sys.argv[1]), sys.argv[2]
    if moment == "between_renames":
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if atomic.PREVIOUS_MARK in Path(dst).name:  # the old folder is set aside, the new one not yet in
                os.kill(os.getpid(), signal.SIGKILL)
        atomic.os.replace = replace
    with atomic.atomic_path(target, directory=target.suffix == "") as tmp:
        if tmp.is_dir():
            (tmp / "model.json").write_text("new")
        else:
            tmp.write_text("new, half")
        if moment == "while_writing":
            os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("target_name, moment", [("mask.nii.gz", "while_writing"), ("best_model", "while_writing"),
                                                 ("best_model", "between_renames")])
def test_a_kill_at_any_moment_leaves_the_old_output_and_the_next_write_cleans_up(tmp_path, target_name, moment):
    target = tmp_path / target_name
    if target.suffix:
        write_text(target, "old")
    else:
        with atomic_path(target, directory=True) as tmp:
            (tmp / "model.json").write_text("old")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), moment], env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers  # the killed writer's temporary (or the old folder set aside) is still there
    if moment == "between_renames":
        assert not target.exists()  # caught between the renames: the old folder waits aside to be put back
    remove_leftovers(tmp_path)
    assert _names(tmp_path) == [target_name]
    assert (target / "model.json" if target.is_dir() else target).read_text() == "old"
