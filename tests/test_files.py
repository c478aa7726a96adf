"""iti.files: a finished write replaces the file and a failed one leaves the old file and no temporary;
text is read as UTF-8 (a byte-order mark dropped), anything else named with its file and byte offset; outputs
replace only regular files, one writer at a time; digests tell recorded bytes from changed ones."""
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from iti.errors import UsageError
from iti.files import (atomic_write, check_sha256, output_lock, read_json, read_jsonl, read_text, sha256_of,
                       staged_folder, temporaries_of, write_text)


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


def test_text_with_a_byte_order_mark_reads_without_it(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "Café\n".encode("utf-8"))
    assert read_text(path, "--x") == "Café\n"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": [1, "é"]}).encode("utf-8"))
    assert read_json(path, "--x", "fix it") == {"a": [1, "é"]}


@pytest.mark.parametrize("data, offset, byte", [
    ("Caf".encode() + b"\xe9 au lait", 3, "0xe9"),                 # Latin-1
    (b"\xef\xbb\xbf" + "ab".encode() + b"\xff", 5, "0xff"),      # after a BOM: offsets count the file's bytes
    ("naïve".encode("utf-8")[:3], 2, "0xc3"),                     # a character cut in two at the end
    ("x".encode("utf-16"), 0, "0xff"),                            # UTF-16
])
def test_anything_but_utf8_names_the_file_and_the_first_bad_byte(tmp_path, data, offset, byte):
    path = tmp_path / "latin.txt"
    path.write_bytes(data)
    with pytest.raises(UsageError, match=f"^--owt_path {path} is not UTF-8 text: byte {offset} \\({byte}\\) is the "
                                         "first that is not; save it as UTF-8$"):
        read_text(path, "--owt_path")
    assert data[offset:offset + 1] == bytes([int(byte, 16)])


def test_a_folder_or_missing_file_is_named(tmp_path):
    with pytest.raises(UsageError, match=f"--x {tmp_path} cannot be read"):
        read_text(tmp_path, "--x")
    with pytest.raises(UsageError, match="cannot be read .*No such file"):
        read_text(tmp_path / "absent", "--x")


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"a": 1,\n "b": ')
    with pytest.raises(UsageError, match=f"^summary {path} is not valid JSON \\(line 2, column 7: .*\\); rerun it$"):
        read_json(path, "summary", "rerun it")


def test_json_lines_break_only_at_line_ends(tmp_path):
    """U+2028, U+2029 and U+0085 may stand unescaped inside a JSON string (str.splitlines breaks at them)."""
    path = tmp_path / "set.jsonl"
    path.write_bytes('{"t": "a\u2028b\u2029c\x85d"}\r\n\r\n{"t": 2}\r{"t": 3}\n'.encode("utf-8"))
    assert read_jsonl(path, "--x") == [(1, {"t": "a\u2028b\u2029c\x85d"}), (3, {"t": 2}), (4, {"t": 3})]


def test_a_file_that_cannot_be_read_for_any_reason_is_one_line_naming_it(tmp_path):
    (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    with pytest.raises(UsageError, match=r"a.json cannot be read \(Too many levels of symbolic links\)"):
        read_json(tmp_path / "a.json", "--x", "fix it")


# ----------------------------------------------------------------------------- what an output may replace

def _fifo(path):
    os.mkfifo(path)


def _socket(path):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    return listener


def _device(path):
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device file needs root (mknod is not allowed here)")


@pytest.mark.parametrize("make, kind", [(_fifo, r"a named pipe \(FIFO\)"), (_socket, "a socket"), (_device, "a device"),
                                        (os.mkdir, "a folder")])
def test_an_output_over_a_special_file_is_refused_and_the_file_kept(tmp_path, make, kind):
    target = tmp_path / "out.txt"
    keep = make(target)
    before = os.lstat(target)
    with pytest.raises(UsageError, match=f"is {kind}, not a regular file; it is kept"):
        write_text(target, "new")
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    if keep is not None:
        keep.close()


def test_a_link_out_of_the_output_folder_is_refused_one_inside_is_replaced(tmp_path):
    elsewhere, folder = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    folder.mkdir()
    (elsewhere / "theirs.txt").write_text("theirs")
    (folder / "leaving.txt").symlink_to(elsewhere / "theirs.txt")
    with pytest.raises(UsageError, match="symbolic link to .*outside its folder; it is kept"):
        write_text(folder / "leaving.txt", "new")
    assert (elsewhere / "theirs.txt").read_text() == "theirs" and (folder / "leaving.txt").is_symlink()
    (folder / "mine.txt").write_text("old")
    (folder / "inside.txt").symlink_to("mine.txt")
    write_text(folder / "inside.txt", "new")
    assert (folder / "inside.txt").read_text() == "new" and (folder / "mine.txt").read_text() == "old"


def test_a_folder_output_over_a_file_or_a_leaving_link_is_refused(tmp_path):
    (tmp_path / "file").write_text("keep")
    with pytest.raises(UsageError, match="is a file, not a folder; it is kept"):
        with staged_folder(tmp_path / "file"):
            pass
    (tmp_path / "other").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "other")
    with pytest.raises(UsageError, match="outside its folder"):
        with staged_folder(tmp_path / "out" / "link", replace=True):
            pass
    assert (tmp_path / "file").read_text() == "keep" and (tmp_path / "out" / "link").is_symlink()


def test_a_second_writer_of_one_output_is_refused_until_the_first_ends(tmp_path):
    target = tmp_path / "features.npy"
    with output_lock(target, "features"):
        with pytest.raises(UsageError, match=rf"features {target} is being written by another process"):
            with output_lock(target, "features"):
                pass
    assert list(tmp_path.iterdir()) == []
    with output_lock(target):  # free again once the first ended
        pass


def test_the_lock_of_a_writer_that_exited_is_taken_over(tmp_path):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = tmp_path / "run.json"
    lock = tmp_path / ".run.json.lock"
    lock.write_text(f"{socket.gethostname().replace('.', '_').replace('-', '_')}-{exited.stdout.strip()}")
    with output_lock(target):
        assert lock.read_text().endswith(f"-{os.getpid()}")
    assert not lock.exists()
    lock.write_text("another_host-1")  # a writer elsewhere cannot be told dead: it is never taken over
    with pytest.raises(UsageError, match="another_host-1"):
        with output_lock(target):
            pass


def test_a_digest_check_passes_the_recorded_bytes_and_names_any_change(tmp_path):
    path = tmp_path / "labels.npy"
    path.write_bytes(b"0123456789")
    recorded = hashlib.sha256(b"0123456789").hexdigest()
    assert sha256_of(path) == recorded == check_sha256(path, recorded, "labels", "remake them")
    path.write_bytes(b"0123456788")
    with pytest.raises(UsageError, match=rf"labels {path} is not the file that was written there.*; remake them$"):
        check_sha256(path, recorded, "labels", "remake them")


def test_reading_a_named_pipe_is_one_line_not_a_wait_for_a_writer(tmp_path):
    pipe = tmp_path / "summary.json"
    os.mkfifo(pipe)
    # Should the read block after all, a writer comes and goes after a while, so the test fails, not hangs.
    unblock = threading.Timer(10, lambda: os.close(os.open(pipe, os.O_WRONLY)))
    unblock.start()
    try:
        with pytest.raises(UsageError, match=rf"^run record {pipe} is a named pipe \(FIFO\), not a regular file"):
            read_json(pipe, "run record", "give the file")
    finally:
        unblock.cancel()
