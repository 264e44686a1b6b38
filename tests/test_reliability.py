"""Reliability: no cell outlives its runner, nothing outside --out is written or removed, a bad file
never blocks a sweep or a report, and every user mistake is one line with exit code 2.

Faults are injected here (signals, garbage files, read-only directories), never by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from segbench import store
from segbench.cellproc import base_row
from segbench.cli import main
from segbench.launchers import Finished, Launcher
from segbench.runner import run_suite
from segbench.store import CellStore
from segbench.suite import Cell, load_suite

from .helpers import write_suite

# ----------------------------------------------------------------------------- processes


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie holds no memory; init reaps it


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=["KILL", "TERM", "HUP"])
def test_cells_and_forkserver_die_with_the_runner(tmp_path, sig):
    suite = write_suite(tmp_path, name="die", limits={"timeout_s": 600},
                        methods=[{"method": "full", "label": "quick"},
                                 {"method": "fault", "label": "sleeps", "params": {"fault": "sleep"}}])
    out = tmp_path / "out"
    runner = subprocess.Popen(
        [sys.executable, "-m", "segbench.cli", "run", str(suite), "--out", str(out), "--no-progress", "--no-report"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        # Under nohup SIGHUP is ignored and children inherit that (the runner then rightly keeps
        # ignoring it): give the runner the default disposition a terminal session has.
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        # Wait until the quick cell is saved and the sleeping one runs (a grandchild: runner -> forkserver -> cell).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            below = _descendants(runner.pid)
            if len(list((out / "die" / "cells").glob("*.json"))) == 1 and len(below) >= 2:
                break
            assert runner.poll() is None, runner.stderr.read().decode()
            time.sleep(0.1)
        else:
            pytest.fail("the sleeping cell never started")
        time.sleep(0.5)
        below = _descendants(runner.pid)
        runner.send_signal(sig)
        code = runner.wait(timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in below):
            time.sleep(0.1)
        assert not [p for p in below if _alive(p)], "a process of the sweep outlived its runner"
        if sig != signal.SIGKILL:  # handled like Ctrl-C: 128 + the signal, finished cells saved
            assert code == 128 + sig
            assert f"interrupted ({signal.Signals(sig).name})" in runner.stderr.read().decode()
        rows = CellStore(out / "die").rows()
        assert [(r["label"], r["status"]) for r in rows] == [("quick", "ok")]
    finally:
        if runner.poll() is None:
            runner.kill()
        for p in _descendants(runner.pid):
            os.kill(p, signal.SIGKILL)


# ----------------------------------------------------------------------------- the results directory



class InstantLauncher(Launcher):
    """Every cell ends at once with status ok: the runner's bookkeeping without cell processes."""

    name = "instant"

    def __init__(self, suite) -> None:
        super().__init__(suite, suite.spec.launcher)
        self.queued: list[Cell] = []
        self.ran: list[str] = []

    def slots(self) -> int:
        return 1

    def submit(self, cells: Sequence[Cell]) -> None:
        self.queued.extend(cells)

    def wait(self) -> list[Finished]:
        cell = self.queued.pop(0)
        self.ran.append(cell.config_hash)
        row = base_row(cell)
        row.update(status="ok")
        return [(cell, row)]

    def close(self) -> None:
        pass


def _sweep(tmp_path, out, **kw) -> tuple[object, InstantLauncher]:
    fresh = kw.pop("fresh", False)
    suite = load_suite(write_suite(tmp_path, **kw))
    engine = InstantLauncher(suite)
    return run_suite(suite, out, progress=False, launcher=engine, fresh=fresh), engine


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name,slug", [("../..", "suite"), ("/etc", "etc"), ("a/../../b", "a-b"),
                                       ("..\\..\\x", "x"), (".hidden", "hidden"), ("ok_name-1.2", "ok_name-1.2")])
def test_suite_name_is_a_slug_inside_out(tmp_path, name, slug):
    assert store.suite_slug(name) == slug
    outside = _files(tmp_path)
    summary, _ = _sweep(tmp_path, tmp_path / "out", name="s", contexts=[32, 64])
    assert summary.suite_dir == tmp_path / "out" / "s"
    suite = load_suite(write_suite(tmp_path / "out", name="s2", contexts=[32]))
    suite = suite.__class__(name=name, path=suite.path, spec=suite.spec, params=suite.params)
    summary = run_suite(suite, tmp_path / "out", progress=False, launcher=InstantLauncher(suite), fresh=True)
    assert summary.suite_dir == tmp_path / "out" / slug
    assert summary.suite_dir.resolve().parent == (tmp_path / "out").resolve()
    assert {p for p in _files(tmp_path) if not p.is_relative_to(tmp_path / "out")} == outside | {tmp_path / "s.yaml"}


def _own_row(config_hash: str, **values) -> dict:
    row = {"suite": "t", "method": "full", "label": "full", "context_len": 64, "config_hash": config_hash,
           "status": "ok"}
    row.update(values)
    return row


def test_fresh_removes_only_what_segbench_wrote(tmp_path):
    out = tmp_path / "out"
    _sweep(tmp_path, out, contexts=[32, 64])
    d = out / "t"
    store.consolidate(d)
    own_cells = sorted((d / "cells").glob("*.json"))
    (d / "predictions").mkdir()
    (d / "traces").mkdir()
    h = own_cells[0].stem
    store.CellStore(d).write_predictions(h, [{"id": 0, "pred": "x"}])
    (d / "traces" / f"{h}.json").write_text(json.dumps({"config_hash": h, "samples": []}))
    outside = tmp_path / "precious.json"
    outside.write_text(json.dumps(_own_row("0123456789abcdef")))
    foreign = {
        d / "cells" / "notes.json": "{}",
        d / "cells" / "readme.txt": "mine",
        d / "cells" / "ffffffffffffffff.json": json.dumps(_own_row("0000000000000000")),  # hash is not its name
        d / "predictions" / "mine.txt": "hello",
        d / "predictions" / "0123456789abcdef.jsonl": "not json\n",
        d / "traces" / "0123456789abcdef.json": "[1, 2",
        d / "notes.md": "my notes",
    }
    for path, text in foreign.items():
        path.write_text(text)
    (d / "cells" / "0123456789abcdef.json").symlink_to(outside)
    summary, engine = _sweep(tmp_path, out, contexts=[32, 64], fresh=True)
    assert len(engine.ran) == 2  # every cell ran again
    for path, text in foreign.items():
        assert path.read_text() == text, f"--fresh touched {path}"
    assert (d / "cells" / "0123456789abcdef.json").is_symlink() and outside.is_file()
    assert not (d / "results.parquet").exists()
    assert not (d / "predictions" / f"{h}.jsonl").exists() and not (d / "traces" / f"{h}.json").exists()
    assert summary.statuses == {"ok": 2}


def test_a_foreign_results_parquet_survives_fresh(tmp_path):
    d = tmp_path / "out" / "t"
    (d / "cells").mkdir(parents=True)
    (d / "results.parquet").write_bytes(b"PAR1 not really")
    _sweep(tmp_path, tmp_path / "out", fresh=True)
    assert (d / "results.parquet").read_bytes() == b"PAR1 not really"


def test_another_suites_dir_is_refused(tmp_path, capsys):
    d = tmp_path / "out" / "t"
    d.mkdir(parents=True)
    (d / "suite.json").write_text(json.dumps({"name": "t!", "spec": {}}))  # same slug, another suite
    code = main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "out"), "--fresh"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "holds the results of suite 't!'" in err
    (d / "suite.json").write_text("[not segbench]")
    assert main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "out"), "--fresh"]) == 2
    assert "was not written by segbench" in capsys.readouterr().err
    assert (d / "suite.json").read_text() == "[not segbench]"


BAD_CELLS = {
    "latin1.json": b'{"suite": "t", "label": "caf\xe9"}',
    "list.json": b"[1, 2]",
    "empty_object.json": b"{}",
    "truncated.json": b'{"suite": "t", "meth',
    "big.json": None,  # a row with context_len "big" (filled in below)
    "foreign.json": json.dumps({"suite": "t", "method": "full", "label": "full", "context_len": 64,
                                "config_hash": "foreign", "status": "ok", "wandb_run": "x"}).encode(),
}


def _plant_bad_cells(cells_dir: Path, victim: str) -> None:
    for name, data in BAD_CELLS.items():
        (cells_dir / name).write_bytes(data if data is not None else json.dumps(_own_row("big", context_len="big")).encode())
    # The victim's own file replaced by garbage: its cell must run again.
    (cells_dir / f"{victim}.json").write_bytes(b"\xff\xfe garbage")


def test_unreadable_or_foreign_cell_files_are_named_skipped_and_rerun(tmp_path, capsys):
    out = tmp_path / "out"
    first, _ = _sweep(tmp_path, out, contexts=[32, 64, 96])
    cells_dir = first.suite_dir / "cells"
    victim = sorted(cells_dir.glob("*.json"))[0].stem
    _plant_bad_cells(cells_dir, victim)
    capsys.readouterr()
    summary, engine = _sweep(tmp_path, out, contexts=[32, 64, 96])
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "skipped 7 file(s)" in warning[0] and "not UTF-8" in warning[0]
    assert engine.ran == [victim] and summary.reused == 2
    assert summary.statuses == {"ok": 3}  # the foreign "ok" row is not one of this sweep's cells
    # report shows the three good rows and names the rest in one line
    _plant_bad_cells(cells_dir, "not-a-cell")
    assert main(["report", str(out), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1 + 3
    assert len(captured.err.strip().splitlines()) == 1 and "skipped" in captured.err


def test_row_problem_accepts_what_the_store_writes_and_nothing_else():
    good = _own_row("abc", ttft_s=1, ttft_s_all=[0.1], output_token_ids=[1, 2], model_trained=False)
    assert store.row_problem(good, "abc") is None
    for bad in ({**good, "context_len": "big"}, {**good, "context_len": True}, {**good, "status": "fine"},
                {**good, "config_hash": "../x"}, {**good, "output_token_ids": ["a"]}, {**good, "extra": 1},
                {k: v for k, v in good.items() if k != "status"}, [good], "row"):
        assert store.row_problem(bad, "abc") is not None, bad
    assert store.row_problem(good, "abd") is not None  # its name is not its hash


def test_symlinked_folders_are_refused(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    d = tmp_path / "out" / "t"
    d.mkdir(parents=True)
    (d / "cells").symlink_to(elsewhere)
    assert main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "symbolic link" in err
    assert not list(elsewhere.iterdir())


@pytest.mark.parametrize("where", ["t", "t/cells", "t/predictions", "t/traces", "t/slurm"])
def test_a_results_dir_that_is_a_file_is_one_line(tmp_path, capsys, where):
    target = tmp_path / "out" / where
    target.parent.mkdir(parents=True)
    target.write_text("a file where a folder goes")
    assert main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write results" in err
    assert target.read_text() == "a file where a folder goes"


@pytest.mark.parametrize("where", ["t", "t/predictions", "t/traces", "t/slurm"])
def test_symlinked_suite_folders_are_refused(tmp_path, capsys, where):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "out" / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    assert main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert not list(elsewhere.iterdir())


# ----------------------------------------------------------------------------- the lock


def test_a_second_run_on_the_same_out_is_refused(tmp_path, capsys):
    suite = write_suite(tmp_path)
    d = tmp_path / "out" / "t"
    d.mkdir(parents=True)
    with store.SuiteLock(d):
        code = main(["run", str(suite), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "in use by another `segbench run`" in err and f"pid {os.getpid()}" in err
    assert not (d / store.LOCK_NAME).exists()  # released with its holder


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = tmp_path / "out" / "t"
    d.mkdir(parents=True)
    import socket

    (d / store.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    summary, engine = _sweep(tmp_path, tmp_path / "out")
    assert summary.statuses == {"ok": 1} and not (d / store.LOCK_NAME).exists()


def test_without_flock_a_dead_pid_is_stale_and_a_live_one_holds(tmp_path, monkeypatch):
    import fcntl
    import socket

    def no_flock(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = store.SuiteLock(tmp_path)
    lock.path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(BlockingIOError, match=f"pid {os.getppid()}"):
        lock.acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock.acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()


# ----------------------------------------------------------------------------- one line, exit 2


def _one_line(capsys, argv, *fragments) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def _suite_file(tmp_path, **changes) -> Path:
    base = {"name": "s", "model": "tiny-llama", "dtype": "float32", "device": "cpu", "contexts": [64],
            "methods": [{"method": "full"}]}
    base.update(changes)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _tiny_model_dir(tmp_path, config) -> Path:
    folder = tmp_path / "mymodel"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


TINY_CONFIG = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 4096}


@pytest.mark.parametrize("config,fragment", [
    ("{not json", "is not a readable JSON config"),
    ("[1, 2]", "is not a JSON object"),
    ({k: v for k, v in TINY_CONFIG.items() if k != "hidden_size"}, "lacks hidden_size"),
    ({**TINY_CONFIG, "num_hidden_layers": "two"}, "num_hidden_layers: expected a positive integer"),
    ({**TINY_CONFIG, "num_attention_heads": 0}, "num_attention_heads: expected a positive integer"),
    ({**TINY_CONFIG, "num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
    ({**TINY_CONFIG, "rope_theta": float("nan")}, "rope_theta"),
], ids=["not-json", "list", "incomplete", "string-int", "zero-heads", "gqa", "nan"])
def test_a_broken_model_folder_is_one_line_for_run_and_estimate(tmp_path, capsys, config, fragment):
    folder = _tiny_model_dir(tmp_path, config)
    _one_line(capsys, ["run", str(_suite_file(tmp_path, model=str(folder))), "--out", str(tmp_path / "o")],
              "config.json" if "overrides" not in fragment else "", fragment)
    _one_line(capsys, ["estimate", "--model", str(folder), "--contexts", "1k"], fragment)


@pytest.mark.parametrize("changes,fragments", [
    ({"model": {"name": "tiny-llama", "overrides": {"max_position_embeddings": "x"}}},
     ["model.overrides.max_position_embeddings", "expected a positive integer"]),
    ({"model": {"name": "tiny-llama", "overrides": {"rope_theta": float("inf")}}}, ["model.overrides.rope_theta", "finite"]),
    ({"limits": {"timeout_s": float("nan")}}, ["limits.timeout_s", "nan is not a finite number"]),
    ({"limits": {"host_mem_cap_gb": float("inf")}}, ["limits.host_mem_cap_gb", "inf is not a finite number"]),
    ({"limits": {"timeout_s": 1e300}}, ["timeout_s must be > 0 and at most"]),
    ({"launcher": {"host_mem_gb": float("-inf")}}, ["launcher.host_mem_gb", "finite"]),
    ({"contexts": [10**30]}, ["contexts[0]", "too large"]),
    ({"contexts": [2**40]}, ["beyond any model"]),
    ({"contexts": [-64]}, ["-64 is not a positive token count"]),
    ({"workload": {"seed": -1}}, ["seed must be between 0"]),
    ({"workload": {"process_repeats": 10**9}}, ["more than 100000 cells"]),
    ({"launcher": {"kind": "kubernetes"}}, ["launcher.kind", "'kubernetes' is not one of"]),
    ({"name": ["a"]}, ["name", "expected a string"]),
    ({"launcher": {"max_parallel": 10**7}}, ["max_parallel must be >= 1 and at most"]),
    ({"plugins": ["broken_plugin.py"]}, ["plugins: importing", "SyntaxError"]),
], ids=["override-str", "override-inf", "nan-timeout", "inf-cap", "huge-timeout", "inf-host-mem", "huge-int",
        "huge-context", "negative-context", "negative-seed", "too-many-cells", "unknown-launcher", "list-name",
        "huge-parallel", "broken-plugin"])
def test_bad_values_are_one_line(tmp_path, capsys, changes, fragments):
    (tmp_path / "broken_plugin.py").write_text("def oops(:\n")
    path = _suite_file(tmp_path, **changes)
    _one_line(capsys, ["run", str(path), "--out", str(tmp_path / "o")], str(path), *fragments)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,fragment", [
    (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
    (b"", "the suite file is empty"),
    (b"- a\n- b\n", "a suite is a mapping"),
    (b"[" * 5000, "nested too deeply"),
    (b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n".encode() for p, n in zip("abcdefgh", "bcdefghi"))
     + b"model: {name: tiny-llama, overrides: {x: *i}}\ncontexts: [64]\nmethods: [{method: full}]\n",
     "expands to more than"),
], ids=["latin1", "empty", "list", "deep", "billion-laughs"])
def test_unreadable_suite_files_are_one_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "s.yaml"
    path.write_bytes(content)
    _one_line(capsys, ["run", str(path)], fragment)


def test_a_directory_as_the_suite_is_one_line(tmp_path, capsys):
    _suite_file(tmp_path)
    _one_line(capsys, ["run", str(tmp_path)], "is a directory", "s.yaml")


@pytest.mark.parametrize("contexts", ["0", "-5", "4k,0", "99999999999k", "1e3", "٣"])
def test_estimate_contexts_must_be_positive_counts(capsys, contexts):
    _one_line(capsys, ["estimate", "--model", "tiny-llama", f"--contexts={contexts}"], "--contexts")


def test_estimate_param_nan_is_one_line(capsys):
    _one_line(capsys, ["estimate", "--model", "tiny-llama", "--method", "full", "--param", "chunk_size=.nan",
                       "--contexts", "1k"], "chunk_size")


@pytest.mark.parametrize("flags", [["--max-parallel", "9" * 30], ["--slurm-time=-1"], ["--slurm-time", "9" * 20],
                                   ["--slurm-time", "1-"], ["--gpus-per-cell", "0"]])
def test_bad_flag_values_are_one_line(tmp_path, capsys, flags):
    _one_line(capsys, ["run", str(write_suite(tmp_path)), *flags], flags[0].split("=")[0])


def test_estimate_param_that_is_not_yaml_is_one_line(capsys):
    _one_line(capsys, ["estimate", "--method", "full", "--param", "chunk_size=[1"], "--param", "not valid YAML")


def test_slurm_without_slurm_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setattr("segbench.launchers.slurm.shutil.which", lambda name: None)
    _one_line(capsys, ["run", str(write_suite(tmp_path)), "--launcher", "slurm", "--out", str(tmp_path / "o")],
              "--launcher slurm: no Slurm", "cluster: local")


def _good_suite_dir(root: Path, name: str) -> None:
    cells = store.CellStore(root / name)
    cells.write(_own_row("a1", suite=name))


def test_a_corrupt_parquet_alone_is_one_line_and_does_not_hide_its_neighbours(tmp_path, capsys):
    bad = tmp_path / "res" / "bad"
    bad.mkdir(parents=True)
    (bad / "results.parquet").write_bytes(b"garbage, not parquet")
    _one_line(capsys, ["report", str(bad)], "no readable results", "results.parquet")
    _good_suite_dir(tmp_path / "res", "good")
    assert main(["report", str(tmp_path / "res"), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2 and "\ngood," in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "bad/results.parquet" in captured.err
    from segbench import analysis

    df = analysis.load_results([tmp_path / "res"])  # the dashboard's loader
    assert list(df["suite"]) == ["good"] and any("bad" in n for n in df.attrs[analysis.LOAD_NOTES])


def test_report_on_a_read_only_suite_dir_is_one_line(tmp_path, capsys, monkeypatch):
    _good_suite_dir(tmp_path, "ro")

    def read_only(*args, **kwargs):  # root ignores chmod: inject the error a read-only dir gives
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store.tempfile, "mkstemp", read_only)
    _one_line(capsys, ["report", str(tmp_path / "ro")], "cannot write", "results.parquet", "Permission denied")


def test_html_to_an_unwritable_path_is_one_line(tmp_path, capsys):
    pytest.importorskip("plotly")
    _good_suite_dir(tmp_path, "h")
    (tmp_path / "h" / "suite.json").write_text("{}")  # a file where --html wants a folder
    _one_line(capsys, ["report", str(tmp_path / "h"), "--html", str(tmp_path / "h" / "suite.json" / "x.html")],
              "--html")


# ----------------------------------------------------------------------------- structure and timing


def test_launchers_never_import_the_runner():
    import ast

    root = Path(__file__).resolve().parent.parent / "segbench"
    for path in [root / "cellproc.py", *sorted((root / "launchers").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not [n for n in names if n.startswith("segbench.runner")], f"{path.name} imports the runner"


def test_the_first_cells_clock_starts_after_the_forkserver_is_up(tmp_path, monkeypatch):
    """duration_s of the first cell must not hold the forkserver's imports (seconds)."""
    import datetime as real_dt
    import multiprocessing.forkserver as fs

    from segbench import cellproc

    events: list[str] = []
    real_ensure = fs.ForkServer.ensure_running

    def ensure_running(self):
        fresh = self._forkserver_pid is None
        real_ensure(self)
        if fresh:
            events.append("forkserver started")

    class Clock:  # cellproc reads the wall clock once, as the cell's clock starts
        timezone = real_dt.timezone

        class datetime:
            @staticmethod
            def now(tz=None):
                events.append("cell clock started")
                return real_dt.datetime.now(tz)

    fs._forkserver._stop()  # a forkserver from an earlier test would hide the start-up
    monkeypatch.setattr(cellproc, "_WARM", False)
    monkeypatch.setattr(fs.ForkServer, "ensure_running", ensure_running)
    monkeypatch.setattr(cellproc, "dt", Clock)
    summary = run_suite(load_suite(write_suite(tmp_path, contexts=[32])), tmp_path / "out", progress=False)
    assert summary.statuses == {"ok": 1}
    assert events == ["forkserver started", "cell clock started"]
