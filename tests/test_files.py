"""iti.files: a finished write replaces the file and a failed one leaves the old file and no temporary;
text is read as UTF-8 (a byte-order mark dropped), anything else named with its file and byte offset."""
import json

import pytest

from iti.errors import UsageError
from iti.files import atomic_write, read_json, read_jsonl, read_text, temporaries_of, write_text


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
