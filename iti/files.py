"""Writing outputs safely: every file (or folder) goes to a unique temporary name beside its target and is renamed
into place, so neither a killed run nor a parallel one leaves or sees a half-written file under a real name.
Temporary names carry their writer (host, pid): a later run tells a killed writer's leftovers from a live one's."""
from __future__ import annotations

import csv
import errno
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from iti.errors import UsageError

UTF8_BOM = b"\xef\xbb\xbf"


def temporary_path(path: Path) -> Path:
    """`.{name}.{host}-{pid}.{random}.tmp` in the target's folder (the same file system: os.replace is atomic)."""
    return path.with_name(f".{path.name}.{_host()}-{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_")


def temporaries_of(path: Path) -> list[Path]:
    """The temporary files and folders of `path` that exist now (any writer's)."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def writer_running(temporary: Path) -> bool:
    """False only when the temporary's writer ran on this host and has exited; another host's cannot be told."""
    return _owner_running(temporary.name[:-len(".tmp")].split(".")[-2])


def _owner() -> str:
    return f"{_host()}-{os.getpid()}"


def _owner_running(owner: str) -> bool:
    """Whether the process `{host}-{pid}` may still run: False only for one of this host that has exited."""
    host, _, pid = owner.rpartition("-")
    if host != _host() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_SPECIAL_FILES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
                  (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def check_output_file(path: str | Path, what: str = "output") -> None:
    """An output file may only replace a regular file (or take a free name): a folder, FIFO, device or socket
    there, or a symbolic link that leads out of the output's folder, is a UsageError and is kept."""
    path = Path(path)
    _check_link_stays(path, what)
    kind = _special_kind(path)
    if kind is not None:
        raise UsageError(f"{what} {path} is {kind}, not a regular file; it is kept: give the path of a regular file "
                         "or of none")


def _special_kind(path: Path, kinds=_SPECIAL_FILES) -> str | None:
    """What non-regular file stands at `path` (links followed), in words; None for a regular file or nothing."""
    try:
        mode = path.stat().st_mode
    except OSError:  # nothing there, or a dangling link
        return None
    return next((name for test, name in kinds if test(mode)), None)


def check_output_folder(path: str | Path, what: str = "output folder") -> None:
    """An output folder may only be a folder (or a free name), and not a symbolic link out of its parent."""
    path = Path(path)
    _check_link_stays(path, what)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder; it is kept: give the path of a folder or of none")


def _check_link_stays(path: Path, what: str) -> None:
    if path.is_symlink():
        target = path.resolve()
        if target.parent != path.parent.resolve():
            raise UsageError(f"{what} {path} is a symbolic link to {target}, outside its folder; it is kept: give "
                             "a path in the folder you mean to write")


@contextmanager
def output_lock(path: str | Path, what: str = "output") -> Iterator[None]:
    """Only one writer of `path` at a time: a lock file `.{name}.lock` beside it holds the writer (host-pid); a
    second writer gets a UsageError naming the first. A lock whose writer has exited on this host is taken over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = lock.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                holder = ""
            if holder and _owner_running(holder):
                raise UsageError(f"{what} {path} is being written by another process ({holder}, as {lock.name} "
                                 "says); wait until it ends (if no such process runs, remove that lock file)") \
                    from None
            lock.unlink(missing_ok=True)  # left by a writer that exited
    else:
        raise UsageError(f"{what} {path}: its lock {lock} keeps coming back; another process is starting to write "
                         "it: wait until it ends")
    try:
        os.write(handle, _owner().encode())
    finally:
        os.close(handle)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None], what: str = "output") -> Path:
    """Call `write(tmp)` then rename tmp to `path`; on failure nothing is left behind."""
    with staged_files([Path(path)], what) as (tmp,):
        write(tmp)
    return Path(path)


@contextmanager
def staged_files(paths: list[Path], what: str = "output") -> Iterator[list[Path]]:
    """Temporary paths for several files, renamed onto `paths` together once the block finishes; a block
    that fails or is killed leaves none of the final names changed (and, failing, no temporary). Each path
    must be free or a regular file (check_output_file), before the block and again before the renames."""
    paths = [Path(p) for p in paths]
    for path in paths:
        check_output_file(path, what)
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = [temporary_path(p) for p in paths]
    try:
        yield temporary
        for path in paths:
            check_output_file(path, what)
        for tmp, path in zip(temporary, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)


@contextmanager
def staged_folder(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """A new folder beside `target`, renamed to `target` once the block finishes. An existing target is a
    FileExistsError unless `replace` (callers decide what they may replace): then it is deleted once the new is in."""
    target = Path(target)
    check_output_folder(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its folders are private (0700) and outputs should follow the umask.
    staging = temporary_path(target)
    staging.mkdir()
    try:
        yield staging
        if not target.exists():
            os.replace(staging, target)
        elif not replace:
            raise FileExistsError(f"{target} exists")
        else:
            # A folder cannot be renamed over a non-empty one: move the old aside, then drop it.
            old = temporary_path(target)
            os.replace(target, old)
            try:
                os.replace(staging, target)
            except OSError:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_replaceable(flag: str, folder: str | Path, overwrite: bool, ours: str, what: str) -> None:
    """A folder a command writes into must be new or empty, or with `overwrite` hold only names matching `ours`
    (the command's own outputs, called `what`); anything else is never touched, whatever the flags."""
    where = Path(folder).expanduser()
    present = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
    if present and not overwrite:
        raise UsageError(f"{flag} {folder} is not empty; it is kept: give a new or empty folder, or add --overwrite to "
                         f"replace {what} there")
    others = [name for name in present if not re.fullmatch(ours, name)]
    if others:
        raise UsageError(f"{flag} {folder} holds more than {what} ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); it is kept, whatever the flags: give a new or empty "
                         "folder")


def write_text(path: str | Path, text: str, what: str = "output") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)


def write_json(path: str | Path, data) -> Path:
    return write_text(path, json.dumps(plain(data), indent=2) + "\n")


def write_csv(path: str | Path, frame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_npy(path: str | Path, array) -> Path:
    return atomic_write(path, lambda tmp: write_npy(tmp, array))


def write_npy(path: Path, array) -> None:
    """An .npy file that loads without pickle, written in place (for an already temporary path)."""
    with open(path, "wb") as handle:
        np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)


def reserve_space(path: Path) -> None:
    """Allocate the file's blocks now: a sparse memory-mapped file on a full disk dies of SIGBUS at a later
    write, a reserved one raises ENOSPC here. Nothing is reserved where preallocation is unsupported."""
    if not hasattr(os, "posix_fallocate"):
        return
    handle = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(handle, 0, os.fstat(handle).st_size)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(handle)


def sha256_of(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks (a feature file may be larger than memory)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def check_sha256(path: str | Path, recorded: str, what: str, remedy: str) -> str:
    """The file's SHA-256 when it is `recorded` (the digest written beside it when it was made); otherwise a
    UsageError naming the file: it changed or was damaged since, and what it holds is not what was recorded."""
    kind = _special_kind(Path(path))
    if kind is not None:  # a named pipe would never end the read
        raise UsageError(f"{what} {path} is {kind}, not the regular file that was written there; {remedy}")
    try:
        found = sha256_of(path)
    except OSError as err:
        raise UsageError(f"{what} {path} cannot be read ({err.strerror or err}); {remedy}") from None
    if found != recorded:
        raise UsageError(f"{what} {path} is not the file that was written there: its SHA-256 {found[:12]}... differs "
                         f"from the {recorded[:12]}... recorded when it was made (changed or damaged since); {remedy}")
    return found


def plain(value):
    """JSON-ready: NaN and infinities -> null, numpy scalars and arrays -> Python numbers and lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def why_not_a_file(path: Path) -> str:
    """What stands at a path that is no regular file, said so that a user knows what to fix."""
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link that loops (it leads back to itself)"
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        return "does not exist"
    return "is a folder, not a file" if path.is_dir() else "is not a regular file"


def read_text(path: str | Path, what: str, remedy: str = "save it as UTF-8") -> str:
    """A UTF-8 text file without its byte-order mark; unreadable or not UTF-8, a UsageError naming `what`."""
    path = Path(path)
    kind = _special_kind(path, _SPECIAL_FILES[1:])  # a folder is named by the read's own error below
    if kind is not None:  # reading a FIFO would wait for a writer forever
        raise UsageError(f"{what} {path} is {kind}, not a regular file; give a regular file")
    try:
        data = path.read_bytes()
    except OSError as err:  # any: missing, a folder, a symbolic link loop, forbidden, an I/O error
        raise UsageError(f"{what} {path} cannot be read ({err.strerror or err}); give a readable file") from None
    body = data[len(UTF8_BOM):] if data.startswith(UTF8_BOM) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = len(data) - len(body) + err.start
        raise UsageError(f"{what} {path} is not UTF-8 text: byte {offset} (0x{data[offset]:02x}) is the first that "
                         f"is not; {remedy}") from None


def read_json(path: str | Path, what: str, remedy: str):
    """A JSON file as read_text reads text; invalid JSON is a UsageError naming the file and where it breaks."""
    text = read_text(path, what, remedy)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                         f"{remedy}") from None


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON Lines file; lines end at \\n, \\r\\n or \\r only
    (not at the other characters str.splitlines breaks on, which a JSON string may hold)."""
    values = []
    for number, line in enumerate(io.StringIO(read_text(path, what), newline=None), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise UsageError(f"{what} {path}, line {number} is not JSON ({err.msg}); write one JSON object per "
                             "line") from None
    return values


def csv_rows(text: str, path: str | Path, columns: tuple[str, ...], remedy: str) -> list[tuple[int, dict[str, str]]]:
    """(line it starts on, fields by column) of each non-blank row of a CSV file's `text`; a missing column, a row
    whose field count differs from the header's or an open quote is a UsageError naming the line, then `remedy`."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, last_line = [], 0
    try:
        header = next(reader, [])
        missing = [c for c in columns if c not in header]
        if missing:
            raise UsageError(f"{path} line 1 lacks the column(s) {', '.join(missing)} (of {', '.join(columns)}); "
                             f"add them or {remedy}")
        last_line = reader.line_num
        for fields in reader:
            line, last_line = last_line + 1, reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                raise UsageError(f"{path} line {line} has {len(fields)} fields, the header {len(header)}; fix that row "
                                 f"(a field holding a comma needs quotes) or {remedy}")
            rows.append((line, dict(zip(header, fields))))
    except csv.Error as err:
        raise UsageError(f"{path} line {last_line + 1}: {err} (a quote left open?); fix that row or {remedy}") from err
    return rows
