"""Results on disk: one JSON file per finished cell, written atomically; parquet on `report`.

Layout: `<out>/<suite slug>/cells/<config_hash>.json` (one row each), `suite.json` (the resolved
suite, for provenance), `results.parquet` (consolidated by report), `predictions/<hash>.jsonl`
(accuracy cells) and `traces/<hash>.json` (memory timelines). A file either exists complete or
not at all, so a runner killed at any instant leaves nothing corrupt and resume trusts what it finds.

What is read back is checked against the schema: a file segbench did not write (a symlink, bytes
that are not UTF-8 JSON, a row of the wrong shape) is reported and skipped, never trusted, and
`--fresh` removes only files that pass the same checks. Nothing is ever written or removed through
a symlink, so no file can lead a write outside the suite directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import tempfile
import unicodedata
from pathlib import Path

from segbench.schema import COLUMN_BY_NAME, COLUMN_NAMES, STATUSES, empty_row

# A config hash is a file name: nothing in it may climb, hide or separate a path.
HASH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Columns without which a row cannot be resumed or shown: present (and typed) in every row segbench writes.
IDENTITY = ("suite", "method", "label", "context_len", "config_hash", "status")
SUB_DIRS = ("cells", "predictions", "traces")

# Statuses a re-run treats as never finished: the runner, not the cell, was interrupted.
RETRY_ALWAYS = ("lost",)


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(v):
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def complete_row(partial: dict) -> dict:
    """Every schema column present, in schema order; unknown keys refused (they would be lost)."""
    unknown = set(partial) - set(COLUMN_NAMES)
    if unknown:
        raise KeyError(f"row has keys outside segbench.schema: {sorted(unknown)}")
    row = empty_row()
    row.update(partial)
    return row


def suite_slug(name: str) -> str:
    """The directory name a suite's results live under: one path component that cannot climb.

    `name: ../..` or `name: /etc` would otherwise put results (and --fresh) outside --out. Keeps
    letters, digits, '.', '_' and '-'; anything else becomes '-'; no leading dot, at most 100 chars.
    """
    text = unicodedata.normalize("NFKC", str(name))
    slug = re.sub(r"[^A-Za-z0-9._-]+|\.\.+", "-", text)  # '..' never survives, even inside a name
    slug = re.sub(r"-{2,}", "-", slug).strip(".-")[:100].strip(".-")
    return slug or "suite"


LOCK_NAME = ".segbench.lock"


class SuiteLock:
    """One `segbench run` per suite directory: a second one would run every cell again, and their
    timings would compete for the same machine.

    The lock is an flock on `<suite_dir>/.segbench.lock` (released by the kernel however the holder
    dies) whose text names the holder's pid and host for the message. Where the filesystem has no
    flock, the pid decides: a lock whose pid is dead on this host is stale and taken over.
    """

    def __init__(self, suite_dir: Path) -> None:
        self.path = Path(suite_dir) / LOCK_NAME
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {int(info['pid'])} on {str(info['host'])[:100]}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> None:
        """Take the lock, or raise BlockingIOError naming the holder."""
        for _ in range(5):  # the holder may unlink the file between our open and our flock
            if self.path.is_symlink():
                self.path.unlink()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BlockingIOError(self.holder()) from None
            except OSError:  # no flock here (some network filesystems): fall back to the pid
                if self._held_by_live_pid():
                    os.close(fd)
                    raise BlockingIOError(self.holder()) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            self.fd = fd
            return
        raise BlockingIOError(self.holder())

    def _held_by_live_pid(self) -> bool:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return False  # empty or garbled: nobody holds it
        if host != socket.gethostname():
            return True  # cannot tell whether a process on another host lives: assume it does
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False  # stale: its holder is gone
        except PermissionError:
            return True
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: a waiter that opened it retries on the new file
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> SuiteLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _type_ok(value, kind: str) -> bool:
    if value is None:
        return True
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list[int]":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return True  # json: any JSON value


def row_problem(obj, stem: str | None = None) -> str | None:
    """Why `obj` is not a row segbench wrote (None if it is one); `stem` is its file's name without .json."""
    if not isinstance(obj, dict):
        return f"not a JSON object but a {type(obj).__name__}"
    unknown = sorted(set(obj) - set(COLUMN_NAMES))
    if unknown:
        return f"keys outside segbench.schema: {', '.join(map(str, unknown[:3]))}"
    missing = [k for k in IDENTITY if obj.get(k) is None]
    if missing:
        return f"no {', '.join(missing)}"
    for name, value in obj.items():
        kind = COLUMN_BY_NAME[name].dtype
        if not _type_ok(value, kind):
            return f"{name} {str(value)[:20]!r} is not {kind}"
    if not HASH_RE.fullmatch(obj["config_hash"]) or (stem is not None and obj["config_hash"] != stem):
        return "config_hash does not match the file name"
    if obj["status"] not in STATUSES:
        return f"unknown status {obj['status'][:20]!r}"
    return None


def read_own_json(path: Path):
    """A JSON file of this directory's own (a regular file, not a link), or raise ValueError saying why not."""
    if path.is_symlink():
        raise ValueError("a symbolic link")
    if not path.is_file():
        raise ValueError("not a regular file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, RecursionError) as e:
        raise ValueError(f"unreadable ({type(e).__name__})") from None


def skipped_note(skipped: list[tuple[Path, str]], then: str) -> str:
    """One line naming the files skipped and why (the first few; a count for the rest)."""
    shown = "; ".join(f"{p} ({why})" for p, why in skipped[:4])
    more = f"; and {len(skipped) - 4} more" if len(skipped) > 4 else ""
    return f"skipped {len(skipped)} file(s) segbench did not write: {shown}{more}; {then}"


def check_inside(suite_dir: Path) -> None:
    """Refuse a suite directory whose own folders are links: writes through them would land elsewhere."""
    for path in (suite_dir, *(suite_dir / d for d in SUB_DIRS), suite_dir / "slurm"):
        if path.is_symlink():
            raise OSError(f"{path} is a symbolic link; segbench writes only inside --out: remove the link")
        if path != suite_dir and path.exists() and not path.is_dir():
            raise OSError(f"{path} is not a directory; move it away")


class CellStore:
    def __init__(self, suite_dir: Path) -> None:
        self.dir = Path(suite_dir)
        self.cells_dir = self.dir / "cells"
        self.skipped: list[tuple[Path, str]] = []  # files rows() found that are not segbench's, and why

    def path_for(self, config_hash: str) -> Path:
        if not HASH_RE.fullmatch(str(config_hash)):
            raise ValueError(f"config_hash {config_hash!r} cannot name a file")
        return self.cells_dir / f"{config_hash}.json"

    def write(self, row: dict) -> Path:
        """Write a cell's row; an accuracy cell's per-sample predictions go to a side file first,
        so a row on disk always has its predictions beside it."""
        row = dict(row)
        predictions = row.pop("_predictions", None)
        if predictions is not None:
            self.write_predictions(row["config_hash"], predictions)
        row["timeline_samples"] = self.write_trace(row["config_hash"], row.pop("_timeline", None))
        path = self.path_for(row["config_hash"])
        write_json_atomic(path, complete_row(row))
        return path

    def predictions_path(self, config_hash: str) -> Path:
        if not HASH_RE.fullmatch(str(config_hash)):
            raise ValueError(f"config_hash {config_hash!r} cannot name a file")
        return self.dir / "predictions" / f"{config_hash}.jsonl"

    def trace_path(self, config_hash: str) -> Path:
        if not HASH_RE.fullmatch(str(config_hash)):
            raise ValueError(f"config_hash {config_hash!r} cannot name a file")
        return self.dir / "traces" / f"{config_hash}.json"

    def write_predictions(self, config_hash: str, predictions: list[dict]) -> None:
        path = self.predictions_path(config_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                for p in predictions:
                    f.write(json.dumps(p, default=_json_default) + "\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def write_trace(self, config_hash: str, trace: dict | None) -> int:
        """A cell's memory timeline, `traces/<config_hash>.json` (contract: segbench/memtrace.py, the writer),
        written before its row; returns its point count, the row's `timeline_samples` (0: none).
        A cell re-run without one (it failed this time) loses the stale one."""
        path = self.trace_path(config_hash)
        if trace is None:
            path.unlink(missing_ok=True)
            return 0
        write_json_atomic(path, trace)
        return len(trace["t_s"])

    def rows(self) -> list[dict]:
        """Every cell file segbench wrote; anything else is listed in `self.skipped` (its cell re-runs)."""
        self.skipped = []
        if not self.cells_dir.is_dir() or self.cells_dir.is_symlink():
            return []
        out = []
        for path in sorted(self.cells_dir.glob("*.json")):
            try:
                obj = read_own_json(path)
            except ValueError as e:
                self.skipped.append((path, str(e)))
                continue
            why = row_problem(obj, path.stem)
            if why:
                self.skipped.append((path, why))
                continue
            out.append(obj)
        return out

    def finished(self) -> dict[str, dict]:
        return {r["config_hash"]: r for r in self.rows() if r.get("status") not in RETRY_ALWAYS}

    def clear(self) -> list[Path]:
        """Remove the files segbench wrote here (cells, consolidated parquet, predictions, traces),
        and nothing else; returns what it left alone because it could not tell it as its own."""
        own_cells = self.rows()
        left = [p for p, _ in self.skipped]
        for row in own_cells:
            self.path_for(row["config_hash"]).unlink(missing_ok=True)
        parquet = self.dir / "results.parquet"
        if parquet.is_file() and not parquet.is_symlink():
            if _is_own_parquet(parquet):
                parquet.unlink()
            else:
                left.append(parquet)
        for sub, suffix, is_own in (("predictions", ".jsonl", _is_own_jsonl), ("traces", ".json", _is_own_trace)):
            folder = self.dir / sub
            if not folder.is_dir() or folder.is_symlink():
                continue
            for path in sorted(folder.iterdir()):
                if path.name.endswith(suffix) and HASH_RE.fullmatch(path.name[: -len(suffix)]) and is_own(path):
                    path.unlink()
                elif not path.name.startswith("."):
                    left.append(path)
        return left

    def remove_stale_temps(self) -> None:
        if self.cells_dir.is_dir() and not self.cells_dir.is_symlink():
            for path in self.cells_dir.glob(".*.tmp"):
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)


def to_frame(rows: list[dict]):
    """Rows to a DataFrame with the schema's columns and types (JSON columns as strings)."""
    import pandas as pd

    df = pd.DataFrame([complete_row({k: v for k, v in r.items() if k in COLUMN_BY_NAME}) for r in rows], columns=list(COLUMN_NAMES))
    for name in COLUMN_NAMES:
        kind = COLUMN_BY_NAME[name].dtype
        if kind == "json":
            df[name] = df[name].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True))
        elif kind == "int":
            df[name] = df[name].astype("Int64")
        elif kind == "float":
            df[name] = df[name].astype("Float64")
        elif kind == "bool":
            df[name] = df[name].astype("boolean")
        elif kind == "str":
            df[name] = df[name].astype("string")
    return df


def is_own_parquet_columns(columns) -> bool:
    """What `consolidate` writes: schema columns only (an older schema's subset too), keys included."""
    return set(columns) <= set(COLUMN_NAMES) and {"config_hash", "status"} <= set(columns)


def _is_own_parquet(path: Path) -> bool:
    try:
        import pyarrow.parquet as pq

        return is_own_parquet_columns(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - any failure to read it means it is not ours to delete
        return False


def _is_own_jsonl(path: Path) -> bool:
    """Prediction files are lines of JSON objects."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with path.open(encoding="utf-8") as f:
            return all(isinstance(json.loads(line), dict) for line in f if line.strip())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False


def _is_own_trace(path: Path) -> bool:
    """A memory trace is one JSON object; one that names a config hash must name its own file's."""
    try:
        obj = read_own_json(path)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("config_hash", path.stem) == path.stem


def consolidate(suite_dir: Path, cells: CellStore | None = None) -> Path:
    """Write `results.parquet` from the cell files (atomically) and return its path."""
    cells = cells or CellStore(suite_dir)
    rows = cells.rows()
    df = to_frame(rows).sort_values(["method", "label", "context_len", "task", "repeat_group"], na_position="last")
    out = Path(suite_dir) / "results.parquet"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)  # never a fixed, linkable name
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


def is_suite_dir(path: Path) -> bool:
    return (path / "results.parquet").is_file() or (path / "cells").is_dir()


def suite_dirs(path: str | Path) -> list[Path]:
    """Suite directories at or under `path` (a suite dir, or a parent of several, at any depth)."""
    root = Path(path)
    if is_suite_dir(root):
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and is_suite_dir(here):
            found.append(here)
            dirnames.clear()  # a suite's cells/ holds no further suites
        dirnames.sort()
    return sorted(found)
