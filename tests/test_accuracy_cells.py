"""Accuracy cells in the harness: RULER samples through a method, official scores, intervals,
per-sample predictions beside the row, and random weights flagged."""

from __future__ import annotations

import json

import pytest

from segbench.errors import UserError
from segbench.runner import run_suite
from segbench.store import CellStore
from segbench.suite import load_suite

from .helpers import write_suite


def test_ruler_cells_score_with_intervals_and_predictions(tmp_path):
    path = write_suite(
        tmp_path, name="acc", contexts=[768], latency=False,
        limits={"timeout_s": 240, "host_mem_cap_gb": 4},
        tasks=[{"benchmark": "ruler", "names": ["niah_single_1", "qa_1"], "n": 2}],
        methods=[{"method": "full"}, {"method": "streamingllm", "params": {"sinks": 4, "window": 252, "chunk_size": 128}}],
    )
    summary = run_suite(load_suite(path), tmp_path / "out", progress=False)
    rows = CellStore(summary.suite_dir).rows()
    assert {(r["label"], r["task"]) for r in rows} == {
        ("full", "ruler/niah_single_1"), ("full", "ruler/qa_1"),
        ("streamingllm", "ruler/niah_single_1"), ("streamingllm", "ruler/qa_1"),
    }
    for r in rows:
        assert r["model_trained"] is False  # random weights: chance, and the row says so
        if r["task"] == "ruler/qa_1":  # needs local SQuAD: a result, not a crash
            assert r["status"] == "unsupported" and "dev-v2.0.json" in r["status_detail"]
            continue
        assert r["status"] == "ok", r["status_detail"]
        assert r["n"] == 2
        assert 0.0 <= r["score_ci_low"] <= r["score"] <= r["score_ci_high"] <= 1.0
        assert r["score_ci_high"] > r["score_ci_low"]  # n=2 cannot pin a score down
        assert r["ttft_s"] > 0 and r["peak_prefill_mem_bytes"] > 0
        preds = CellStore(summary.suite_dir).predictions_path(r["config_hash"]).read_text().splitlines()
        assert len(preds) == 2
        first = json.loads(preds[0])
        assert first["prompt_tokens"] <= 768 - 128 and first["references"]
        assert set(first) >= {"prediction", "score", "metric"}


def test_scoring_of_a_planted_answer():
    from segbench.accuracy.harness import Sample, interval, score_sample

    s = Sample(0, [1, 2], ["7421", "1234"], 128, extra={"metric": "string_match_all"})
    assert score_sample("ruler/niah_multivalue", s, " 7421 and 1234.") == 1.0
    assert score_sample("ruler/niah_multivalue", s, " 7421") == 0.5
    assert score_sample("ruler/niah_multivalue", s, " 9999") == 0.0
    low, high = interval([1.0, 0.0, 1.0, 1.0])
    assert 0.0 < low < 0.75 < high <= 1.0


def test_unknown_task_names_are_one_line(tmp_path):
    path = write_suite(tmp_path, tasks=[{"benchmark": "ruler", "names": ["niah_singel_1"]}])
    with pytest.raises(UserError, match="unknown ruler task 'niah_singel_1'.*did you mean 'niah_single_1'"):
        load_suite(path)


def test_shipped_ruler_cpu_suite_expands_to_all_methods_and_tasks():
    suite = load_suite("suites/ruler_cpu.yaml")
    cells = suite.cells()
    assert {c.method for c in cells} == {"full", "segmented", "longgen", "snapkv", "streamingllm"}
    assert {c.task for c in cells} == {"ruler/niah_single_1", "ruler/vt", "ruler/fwe"}
    assert all(c.task for c in cells)  # latency: false


def test_longbench_e_cell_stores_its_buckets_and_the_report_shows_them_x100(tmp_path):
    from segbench.report import display_frame, load

    records = [{"input": f"Who is {i}?", "context": f"Person {i} is Ann{i}.", "answers": [f"Ann{i}"],
                "length": length, "all_classes": None, "dataset": "hotpotqa_e", "language": "en", "_id": str(i)}
               for i, length in enumerate([100, 5000, 9000])]
    (tmp_path / "hotpotqa_e.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    path = write_suite(
        tmp_path, name="lbe", contexts=[512], latency=False, limits={"timeout_s": 240, "host_mem_cap_gb": 4},
        tasks=[{"benchmark": "longbench_e", "names": ["hotpotqa"], "n": 1, "data_dir": str(tmp_path)}],
    )
    summary = run_suite(load_suite(path), tmp_path / "out", progress=False)
    (row,) = CellStore(summary.suite_dir).rows()
    assert row["status"] == "ok", row["status_detail"]
    assert row["task"] == "longbench_e/hotpotqa" and row["n"] == 3
    for col in ("score_0_4k", "score_4_8k", "score_8k_plus"):
        assert 0.0 <= row[col] <= 1.0  # one sample per bucket, scored with hotpotqa's F1
    shown = display_frame(load(tmp_path / "out"))
    assert {"0-4k x100", "4-8k x100", "8k+ x100"} <= set(shown.columns)
    assert shown["0-4k x100"][0] == f"{100 * row['score_0_4k']:.2f}"
