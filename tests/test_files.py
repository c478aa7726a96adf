"""iti.files.atomic_write: a finished write replaces the file; a failed one leaves the old file and no temporary."""
import pytest

from iti.files import atomic_write, temporaries_of, write_text


def test_finished_write_replaces_and_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "result.txt"
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"

    def fail_midway(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail_midway)
    assert target.read_text() == "second"
    assert temporaries_of(target) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.txt"]
