"""Memory and time do not distort each other: a real cell times with the allocator users run with,
measures memory in its own pass, last; its trace lands beside its row; failed rows keep estimates."""

from __future__ import annotations

import json
from types import SimpleNamespace

from segbench.estimates import estimate_columns
from segbench.method import make_method
from segbench.models import DTYPE_BYTES, shape_of
from segbench.runner import run_suite
from segbench.store import CellStore
from segbench.suite import load_suite

from .helpers import HERE, write_suite


def test_timing_passes_keep_the_default_allocator_and_the_memory_pass_comes_last(tmp_path):
    log = tmp_path / "probe.jsonl"
    path = write_suite(
        tmp_path, plugins=[str(HERE / "tracker_methods.py")], contexts=[64],
        workload={"decode_tokens": 2, "warmup": 1, "repeats": 2},
        methods=[{"method": "allocator_probe", "params": {"log": str(log)}}],
    )
    summary = run_suite(load_suite(path), tmp_path / "out", progress=False)
    (row,) = CellStore(summary.suite_dir).rows()
    assert row["status"] == "ok", row["status_detail"]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    prefills = [i for i, e in enumerate(entries) if e["phase"] == "prefill"]
    assert len(prefills) == 1 + 2 + 1  # warmup, repeats, then the memory pass
    timing, memory = entries[: prefills[-1]], entries[prefills[-1]:]
    assert len(memory) == 1, "nothing may run after the memory pass (its allocator pin is for good)"
    assert [e["phase"] for e in timing].count("decode") == 3 * 2
    # Read back from glibc itself: the timing passes ran with the dynamic mmap threshold ...
    assert all(e["dynamic"] for e in timing), timing
    assert {e["allocator"] for e in timing} == {"glibc defaults (dynamic mmap threshold)"}
    # ... the memory pass with it pinned, and only it has a sampler thread.
    assert not memory[0]["dynamic"] and memory[0]["allocator"].startswith("glibc pinned")
    assert {e["threads"] for e in timing} == {timing[0]["threads"]}
    assert memory[0]["threads"] == timing[0]["threads"] + 1
    # The row says so.
    assert row["timing_pass"] == "timing" and row["timing_allocator"] == "glibc defaults (dynamic mmap threshold)"
    assert row["peak_mem_pass"] == "memory" and row["peak_mem_allocator"].startswith("glibc pinned")
    assert row["host_rss_peak_delta_bytes"] == row["cpu_rss_peak_delta_bytes"] >= 0
    # Its trace lies beside it, in the dashboard's contract.
    trace = json.loads((summary.suite_dir / "traces" / f"{row['config_hash']}.json").read_text())
    assert set(trace) == {"config_hash", "source", "t_s", "bytes", "nvml_used_bytes", "ttft_s", "weights_bytes"}
    assert trace["config_hash"] == row["config_hash"] and trace["source"] == "cpu_rss"
    assert trace["nvml_used_bytes"] is None and trace["weights_bytes"] == row["weights_bytes"]
    assert row["timeline_samples"] == len(trace["t_s"]) == len(trace["bytes"]) >= 2
    assert all(b > a for a, b in zip(trace["t_s"], trace["t_s"][1:]))
    assert max(trace["bytes"]) <= row["peak_prefill_mem_bytes"]
    assert min(trace["bytes"]) >= row["weights_bytes"]


def _expected(cell_like) -> dict:
    est = make_method(cell_like.method, cell_like.params).estimate(
        shape_of(cell_like.model, None), cell_like.context_len, DTYPE_BYTES[cell_like.dtype], cell_like.device)
    return {"est_kv_cache_bytes": est.stored_kv_bytes, "est_peak_prefill_bytes": est.peak_prefill_bytes}


def test_failed_rows_carry_the_estimate(tmp_path):
    path = write_suite(
        tmp_path, contexts=[32, 64],
        methods=[
            {"method": "fault", "label": "raises", "params": {"fault": "raise"}},
            {"method": "fault", "label": "kills", "params": {"fault": "kill"}},
            {"method": "fault", "label": "refuses", "params": {"fault": "unsupported"}},
            {"method": "fault", "label": "ooms", "params": {"fault": "oom_above", "oom_above": 8}},
        ],
    )
    summary = run_suite(load_suite(path), tmp_path / "out", progress=False)
    rows = CellStore(summary.suite_dir).rows()
    statuses = {(r["label"], r["context_len"]): r["status"] for r in rows}
    assert statuses == {("raises", 32): "error", ("raises", 64): "error", ("kills", 32): "killed",
                        ("kills", 64): "killed", ("refuses", 32): "unsupported", ("refuses", 64): "unsupported",
                        ("ooms", 32): "oom", ("ooms", 64): "skipped"}
    for r in rows:
        cell_like = SimpleNamespace(method=r["method"], params=json.loads(r["params"]), model=r["model"],
                                    context_len=r["context_len"], dtype=r["dtype"], device=r["device"])
        want = _expected(cell_like)
        assert {k: r[k] for k in want} == want, r["label"]
        assert want["est_kv_cache_bytes"] > 0
        assert r["timeline_samples"] == 0  # no memory pass ran, no trace
    assert not (summary.suite_dir / "traces").exists() or not any((summary.suite_dir / "traces").iterdir())


def test_no_estimate_is_no_estimate_not_a_lost_row():
    unknown = SimpleNamespace(method="no_such_method", params={}, model="tiny-llama", model_overrides=None,
                              context_len=64, dtype="float32", device="cpu")
    assert estimate_columns(unknown) == {}
    known = SimpleNamespace(**{**vars(unknown), "method": "full"})
    assert estimate_columns(known) == _expected(known)
