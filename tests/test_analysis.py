"""The dashboard's data layer against answers worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from segbench import analysis as an
from segbench.schema import COLUMN_NAMES, empty_row

GIB = 2**30


def row(**values) -> dict:
    """A schema-complete latency row: an ok cell of a fixed configuration, overridden by `values`."""
    r = empty_row()
    r.update(
        suite="t",
        method="full",
        label="full",
        params="{}",
        model="tiny-random",
        model_trained=False,
        dtype="bfloat16",
        device="cpu",
        context_len=4096,
        decode_tokens=16,
        task="",
        repeat_group=0,
        status="ok",
    )
    r.update(values)
    return r


def frame(rows: list[dict], index=None) -> pd.DataFrame:
    df = pd.DataFrame(rows, index=index)
    df["source"] = "run"
    return df


# ------------------------------------------------------------------------------------ pareto


def test_front_minimize_both_with_tie_and_dominated_by():
    # (x, y), both minimized, worked out by hand:
    #   a(1,5) front: lowest x.      b(2,3) and e(2,3) front: equal points dominate neither other.
    #   c(3,4) dominated by b and e (c is worse on both) but not by a (5 > 4) or d (4 > 3).
    #   d(4,1) front: lowest y.      f(4,2) dominated by d only (equal x, worse y).
    pts = pd.DataFrame(
        {"x": [1, 2, 3, 4, 2, 4], "y": [5, 3, 4, 1, 3, 2]}, index=["a", "b", "c", "d", "e", "f"]
    )
    front, dom = an.pareto_front(pts, minimize=["x", "y"])
    assert list(front.index) == ["a", "b", "e", "d"]  # sorted by x for the step line
    assert sorted(dom.index) == ["c", "f"]
    assert dom.loc["c", "dominated_by"] == "b"  # the dominating front cell with the lowest x
    assert dom.loc["c", "dominated_by_all"] == ("b", "e")
    assert dom.loc["f", "dominated_by"] == "d"
    assert dom.loc["f", "dominated_by_all"] == ("d",)


def test_front_minimize_and_maximize():
    # memory down, accuracy up: m1(2, .50) m2(4, .80) m3(5, .70) m4(8, .80) m5(8, .90)
    #   m3 is beaten by m2 (less memory, higher accuracy); m4 by m2 (same accuracy, less memory).
    pts = pd.DataFrame({"mem": [2, 4, 5, 8, 8], "acc": [0.5, 0.8, 0.7, 0.8, 0.9]}, index=[10, 11, 12, 13, 14])
    front, dom = an.pareto_front(pts, minimize=["mem"], maximize=["acc"])
    assert list(front.index) == [10, 11, 14]
    assert dom["dominated_by"].to_dict() == {12: 11, 13: 11}


def test_front_missing_values_are_excluded_and_reported():
    pts = pd.DataFrame({"x": [1.0, np.nan, 3.0, 2.0], "y": [2.0, 0.1, np.nan, 1.0]}, index=list("pqrs"))
    front, dom = an.pareto_front(pts, minimize=["x", "y"])
    # Without q and r: p(1,2) and s(2,1) trade off; q would have dominated everything on y.
    assert list(front.index) == ["p", "s"]
    assert dom.empty
    missing = an.incomplete_rows(pts, ["x", "y"])
    assert missing["missing"].to_dict() == {"q": "x", "r": "y"}


def test_front_group_by_context_keeps_groups_apart():
    # At 4K, a2 is dominated by a1. At 8K the same numbers as a2 are the only point: front.
    pts = pd.DataFrame(
        {"context_len": [4096, 4096, 8192], "x": [1, 2, 2], "y": [1, 2, 2]}, index=["a1", "a2", "b1"]
    )
    front, dom = an.pareto_front(pts, minimize=["x", "y"], group_by=["context_len"])
    assert list(front.index) == ["a1", "b1"]
    assert dom.loc["a2", "dominated_by"] == "a1"
    # Without grouping, b1 (2,2) is dominated by a1 (1,1) too.
    front_all, dom_all = an.pareto_front(pts, minimize=["x", "y"])
    assert list(front_all.index) == ["a1"]
    assert dom_all["dominated_by"].to_dict() == {"a2": "a1", "b1": "a1"}


def test_front_identical_points_all_on_front_and_single_objective_ties():
    pts = pd.DataFrame({"x": [3, 3, 3], "y": [1, 1, 1]}, index=[0, 1, 2])
    front, dom = an.pareto_front(pts, minimize=["x", "y"])
    assert list(front.index) == [0, 1, 2] and dom.empty
    one = pd.DataFrame({"ttft": [0.5, 0.2, 0.2, 0.9]})
    front, dom = an.pareto_front(one, minimize=["ttft"])
    assert list(front.index) == [1, 2]
    assert dom["dominated_by"].to_dict() == {0: 1, 3: 1}


def test_front_rejects_duplicate_index_and_no_objectives():
    pts = pd.DataFrame({"x": [1, 2]}, index=[0, 0])
    with pytest.raises(ValueError, match="unique index"):
        an.pareto_front(pts, minimize=["x"])
    with pytest.raises(ValueError, match="objective"):
        an.pareto_front(pts.reset_index(drop=True))


# ------------------------------------------------------------------------------------ repeats


def test_t_quantiles():
    assert an.t_quantile_975(1) == pytest.approx(12.7062)
    assert an.t_quantile_975(2) == pytest.approx(4.3027)
    # Past the table the expansion must continue it smoothly and match published values.
    assert an.t_quantile_975(40) == pytest.approx(2.0211, abs=2e-4)
    assert an.t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)
    assert an.t_quantile_975(30) > an.t_quantile_975(31) > an.t_quantile_975(40)
    with pytest.raises(ValueError):
        an.t_quantile_975(0)


def test_mean_ci95_by_hand():
    # mean 2, s = 1, n = 3: half width = 4.3027 / sqrt(3) = 2.48417
    mean, lo, hi = an.mean_ci95([1.0, 2.0, 3.0])
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - 2.48417, 2.0 + 2.48417), abs=1e-4)
    mean, lo, hi = an.mean_ci95([7.0, np.nan])
    assert mean == 7.0 and math.isnan(lo) and math.isnan(hi)


def test_aggregate_repeats_groups_and_intervals():
    df = frame(
        [
            row(repeat_group=0, ttft_s=1.0, config_hash="h0"),
            row(repeat_group=1, ttft_s=2.0, config_hash="h0"),
            row(repeat_group=2, ttft_s=3.0, config_hash="h0"),
            row(context_len=8192, ttft_s=4.0),  # a single repeat: no interval of its own
            row(context_len=16384, ttft_s=None, repeat_group=0),
            row(context_len=16384, ttft_s=6.0, repeat_group=1),  # one missing repeat: mean of one
        ]
    )
    agg = an.aggregate_repeats(df, ["ttft_s"]).set_index("context_len")
    assert agg.loc[4096, "n_repeats"] == 3
    assert agg.loc[4096, "ttft_s"] == pytest.approx(2.0)
    assert agg.loc[4096, "ttft_s_ci_low"] == pytest.approx(2.0 - 2.48417, abs=1e-4)
    assert agg.loc[4096, "ttft_s_ci_high"] == pytest.approx(2.0 + 2.48417, abs=1e-4)
    assert agg.loc[4096, "config_hash"] == "h0"  # provenance of the first repeat
    assert agg.loc[8192, "ttft_s"] == 4.0 and math.isnan(agg.loc[8192, "ttft_s_ci_low"])
    assert agg.loc[16384, "ttft_s"] == 6.0 and agg.loc[16384, "n_repeats"] == 2


def test_aggregate_keeps_a_single_scores_own_interval():
    df = frame(
        [
            row(task="niah", score=0.6, score_ci_low=0.5, score_ci_high=0.7, n=100),
            row(task="niah", context_len=8192, score=0.2, score_ci_low=0.1, score_ci_high=0.3),
            row(
                task="niah", context_len=8192, score=0.4, score_ci_low=0.3, score_ci_high=0.5, repeat_group=1
            ),
        ]
    )
    agg = an.aggregate_repeats(df, ["score"]).set_index("context_len")
    assert (agg.loc[4096, "score_ci_low"], agg.loc[4096, "score_ci_high"]) == (0.5, 0.7)
    # Two repeats: the interval is over the repeats (mean .3, s = .1414, t1 = 12.7062), not the rows'.
    half = 12.7062 * 0.1414214 / math.sqrt(2)
    assert agg.loc[8192, "score"] == pytest.approx(0.3)
    assert agg.loc[8192, "score_ci_high"] == pytest.approx(0.3 + half, rel=1e-4)


# ------------------------------------------------------------------------------------ budget, compare


def test_best_under_budget_direction_ties_and_groups():
    df = pd.DataFrame(
        {
            "context_len": [4096, 4096, 4096, 4096, 8192],
            "mem": [4 * GIB, 6 * GIB, 6 * GIB, 12 * GIB, 5 * GIB],
            "score:niah": [0.5, 0.8, 0.8, 0.95, 0.4],
            "ttft_s": [2.0, 1.0, 1.5, 0.5, 3.0],
        },
        index=list("abcde"),
    )
    best = an.best_under_budget(df, "score:niah", "mem", 8 * GIB, group_by=["context_len"])
    assert sorted(best.index) == ["b", "c", "e"]  # b, c tie at 4K; d is over budget
    fastest = an.best_under_budget(df, "ttft_s", "mem", 8 * GIB)
    assert list(fastest.index) == ["b"]  # TTFT: lower is better
    assert an.best_under_budget(df, "ttft_s", "mem", 1 * GIB).empty


def test_compare_runs_ratios_and_presence():
    a = frame(
        [
            row(ttft_s=1.0, kv_cache_bytes=100),
            row(ttft_s=3.0, kv_cache_bytes=100, repeat_group=1),
            row(context_len=8192, ttft_s=0.0, kv_cache_bytes=200),
            row(context_len=16384, status="oom"),
        ]
    )
    b = frame([row(ttft_s=1.0, kv_cache_bytes=50), row(context_len=8192, ttft_s=5.0), row(context_len=32768)])
    out = an.compare_runs(a, b, metrics=["ttft_s", "kv_cache_bytes"]).set_index("context_len")
    assert out.loc[4096, "ttft_s_a"] == 2.0 and out.loc[4096, "n_a"] == 2
    assert out.loc[4096, "ttft_s_ratio"] == pytest.approx(0.5)
    assert out.loc[4096, "kv_cache_bytes_ratio"] == pytest.approx(0.5)
    assert math.isnan(out.loc[8192, "ttft_s_ratio"])  # A is 0: no inf
    assert math.isnan(out.loc[8192, "kv_cache_bytes_ratio"])  # B lacks it
    assert out["present"].to_dict() == {4096: "both", 8192: "both", 16384: "only A", 32768: "only B"}
    assert out.loc[16384, "status_a"] == "oom"


# ------------------------------------------------------------------------------------ points, views


def latency_and_accuracy() -> pd.DataFrame:
    rows = []
    for method, mem, ttft, acc in (("full", 10, 1.0, 0.9), ("snapkv", 6, 1.2, 0.8), ("longgen", 7, 2.0, 0.7)):
        for rep in (0, 1):
            rows.append(
                row(method=method, label=method, repeat_group=rep, peak_prefill_mem_bytes=mem * GIB,
                    ttft_s=ttft + 0.1 * rep, config_hash=f"{method}-lat")
            )  # fmt: skip
        rows.append(row(method=method, label=method, task="niah", score=acc, score_ci_low=acc - 0.05,
                        score_ci_high=acc + 0.05, n=50, config_hash=f"{method}-acc"))  # fmt: skip
    rows.append(row(method="segmented", label="segmented", peak_prefill_mem_bytes=3 * GIB, ttft_s=3.0))
    rows.append(row(method="full", label="full", context_len=8192, status="oom", status_detail="CUDA OOM"))
    return frame(rows)


def test_metric_points_joins_latency_and_accuracy():
    pts = an.metric_points(latency_and_accuracy(), ["peak_prefill_mem_bytes", "score:niah"]).set_index(
        "method"
    )
    assert pts.loc["full", "peak_prefill_mem_bytes"] == 10 * GIB
    assert pts.loc["full", "score:niah"] == 0.9
    assert pts.loc["full", "score:niah_ci_low"] == pytest.approx(0.85)
    assert pts.loc["full", "n_repeats"] == 2
    assert pts.loc["full", "config_hash"] == "full-lat"  # provenance of the first key's rows
    assert math.isnan(pts.loc["segmented", "score:niah"])  # no accuracy row: kept, reported missing
    assert "score" not in pts.columns  # raw scores mix tasks: only per-task columns
    assert len(pts) == 4  # the oom cell is not a point


def test_pareto_view_budget_and_chance():
    df = latency_and_accuracy()
    view = an.pareto_view(
        df, "peak_prefill_mem_bytes", "score:niah", budget=an.Budget("peak_prefill_mem_bytes", 8 * GIB)
    )
    # memory down, accuracy up: full (10, .9) and snapkv (6, .8) trade off; longgen (7, .7) loses to snapkv.
    assert list(view.front["method"]) == ["snapkv", "full"]
    dominated = view.dominated.set_index("method")
    assert view.front.loc[dominated.loc["longgen", "dominated_by"], "method"] == "snapkv"
    assert list(view.incomplete["method"]) == ["segmented"]
    assert list(view.best["method"]) == ["snapkv"] and view.best_by == "score:niah"
    assert view.chance_accuracy  # model_trained is False in these rows
    trained = df.assign(model_trained=True)
    assert not an.pareto_view(trained, "peak_prefill_mem_bytes", "score:niah").chance_accuracy
    latency_only = an.pareto_view(df, "peak_prefill_mem_bytes", "ttft_s")
    assert (
        list(latency_only.front["method"]) == ["segmented", "snapkv", "full"]
        and not latency_only.chance_accuracy
    )


def test_scaling_view_failures_and_estimates():
    df = latency_and_accuracy()
    df.loc[df["method"] == "full", "est_peak_prefill_bytes"] = 11.0 * GIB
    view = an.scaling_view(df, "peak_prefill_mem_bytes")
    assert set(view.measured["series"]) == {"full", "snapkv", "longgen", "segmented"}
    assert view.failures[["series", "context_len", "status"]].values.tolist() == [["full", 8192, "oom"]]
    # The oom cell's estimate is drawn too: it shows where the OOM was expected.
    assert view.estimate[["series", "context_len"]].values.tolist() == [["full", 4096], ["full", 8192]]
    assert an.scaling_view(df, "ttft_s").estimate.empty


# ------------------------------------------------------------------------------------ loading


def write_cells(suite_dir, rows):
    cells = suite_dir / "cells"
    cells.mkdir(parents=True)
    for i, r in enumerate(rows):
        (cells / f"{i:04d}.json").write_text(json.dumps(r))


def test_load_cells_validates_and_flags(tmp_path):
    good = row(params={"b": 1, "a": 2}, ttft_s_all=[0.5, 0.6], peak_prefill_mem_bytes=3 * GIB)
    extra = row(context_len=8192, params='{"a": 2, "b": 1}') | {"surprise": 1}
    partial = {k: v for k, v in row(context_len=16384, status="timeout").items() if k != "ttft_s"}
    write_cells(tmp_path / "suite_a", [good, extra, partial])
    (tmp_path / "suite_a" / "cells" / "9999.json").write_text('{"trunc')  # a cell mid-write
    df = an.load_results([tmp_path])
    assert list(df.columns) == [*COLUMN_NAMES, "source", "run"]
    assert len(df) == 3 and set(df["source"]) == {str(tmp_path / "suite_a")}
    assert str(df["context_len"].dtype) == "Int64" and str(df["model_trained"].dtype) == "boolean"
    # JSON columns are canonical text: the dict and the string spelling of the same params group together.
    assert df["params"].tolist() == ['{"a":2,"b":1}', '{"a":2,"b":1}', "{}"]
    assert df["ttft_s_all"].iloc[0] == "[0.5,0.6]"
    notes = "\n".join(df.attrs[an.LOAD_NOTES])
    assert "surprise" in notes and "9999.json" in notes


def test_load_prefers_parquet_and_reads_several_suites(tmp_path):
    write_cells(tmp_path / "runs" / "a", [row(suite="a")])
    b = tmp_path / "runs" / "b"
    write_cells(b, [row(suite="b-cell")])
    pd.DataFrame([row(suite="b-parquet"), row(suite="b-parquet", context_len=8192)]).to_parquet(
        b / "results.parquet"
    )
    df = an.load_results([tmp_path / "runs"])
    assert sorted(df["suite"]) == ["a", "b-parquet", "b-parquet"]
    assert an.load_results([tmp_path / "nothing"]).empty


def test_load_flags_bad_values(tmp_path):
    write_cells(tmp_path / "s", [row(context_len="lots", status="exploded")])
    df = an.load_results([tmp_path / "s"])
    assert pd.isna(df["context_len"].iloc[0])
    notes = "\n".join(df.attrs[an.LOAD_NOTES])
    assert "context_len" in notes and "exploded" in notes


def test_conform_types_a_store_frame():
    # What the report command may hand over: rows from the store, not read by load_results.
    raw = pd.DataFrame(
        [{"method": "full", "context_len": 4096.0, "params": {"k": 1}, "status": "ok", "extra": 1}]
    )
    df = an.conform(raw)
    assert list(df.columns) == [*COLUMN_NAMES, "source", "run"]
    assert df["context_len"].tolist() == [4096] and df["params"].tolist() == ['{"k":1}']
    assert df["source"].tolist() == [""] and "extra" in "\n".join(df.attrs[an.LOAD_NOTES])
    kept = an.conform(raw.assign(source="runs/a"))
    assert kept["source"].tolist() == ["runs/a"]
    assert an.conform(raw.iloc[0:0]).empty


# ------------------------------------------------------------------------------------ names and units


def test_units_and_names():
    assert an.format_bytes(1.5 * GIB) == "1.50 GiB"
    assert an.format_bytes(512) == "512 B"
    assert an.format_bytes(None) == "–"
    assert an.format_tokens(131072) == "128K" and an.format_tokens(1000) == "1000"
    assert an.axis_title("peak_prefill_mem_bytes") == "Peak prefill memory (GiB)"
    assert an.axis_title("score:niah") == "Accuracy (niah, ×100)"
    assert an.to_display(2.0 * GIB, "kv_cache_bytes") == 2.0
    assert an.from_display(2.0, "kv_cache_bytes") == 2 * GIB and an.from_display(2.0, "ttft_s") == 2.0
    # Scores are stored in [0, 1] and shown x100, as published tables show them.
    assert an.to_display(0.25, "score:niah") == pytest.approx(25.0)
    assert an.from_display(25.0, "score:niah") == pytest.approx(0.25)
    assert an.format_value("score:niah", 0.8125) == "81.2"


def test_memory_unit_follows_the_tables():
    # format_bytes switches to GiB at 1 GiB; an axis over the same values must say the same unit.
    small = pd.Series([22 * 2**20, 80 * 2**20])
    assert an.display_unit("peak_prefill_mem_bytes", small) == "MiB"
    assert an.format_bytes(small.max()) == "80.00 MiB"
    assert an.to_display(small, "peak_prefill_mem_bytes", "MiB").tolist() == [22.0, 80.0]
    assert an.axis_title("peak_prefill_mem_bytes", "MiB") == "Peak prefill memory (MiB)"
    big = pd.Series([0.5 * GIB, 1.5 * GIB])
    assert an.display_unit("kv_cache_bytes", big) == "GiB" and an.format_bytes(big.max()) == "1.50 GiB"
    assert an.display_unit("kv_cache_bytes", pd.Series([None, None])) == "GiB"  # no data: GiB
    assert an.display_unit("ttft_s", small) == "s"
    assert an.from_display(80.0, "peak_prefill_mem_bytes", "MiB") == 80 * 2**20
    assert an.metric_info("score:niah").higher_is_better and not an.metric_info("ttft_s").higher_is_better
    with pytest.raises(KeyError):
        an.metric_info("nope")


# ------------------------------------------------------------------------------------ runs


def test_run_labels_tell_two_runs_of_one_suite_apart(tmp_path):
    from segbench import runs

    # `make demo` on a fresh clone: the shipped example and the user's own run share a basename.
    mine = row(started_at="2026-12-01T10:00:05Z", git_sha="b" * 40, hostname="laptop")
    shipped = row(started_at="2026-11-23T17:13:39+00:00", git_sha="a" * 40, hostname="vm")
    write_cells(tmp_path / "results" / "cpu_smoke", [mine, mine | {"started_at": "2026-12-01T10:00:01Z"}])
    write_cells(tmp_path / "results" / "examples" / "cpu_smoke", [shipped])
    df = an.load_results([tmp_path / "results"])
    table = runs.run_table(df)
    # Oldest first; each named by its shortest unique path, earliest start and commit.
    assert table["run"].tolist() == [
        "examples/cpu_smoke · 2026-11-23 17:13 · aaaaaaa",
        "results/cpu_smoke · 2026-12-01 10:00 · bbbbbbb",
    ]
    assert table["hosts"].tolist() == ["vm", "laptop"] and table["cells"].tolist() == [1, 2]
    assert runs.newest_pair(table["run"].tolist()) == tuple(table["run"])  # A: the previous, B: newest
    assert runs.newest_pair(table["run"].tolist()[:1]) is None
    # Series carry the run when more than one is loaded, so the two are not pooled into one line.
    view = an.scaling_view(df.assign(peak_prefill_mem_bytes=GIB), "peak_prefill_mem_bytes")
    assert sorted(view.measured["series"]) == [
        "full · examples/cpu_smoke · 2026-11-23 17:13 · aaaaaaa",
        "full · results/cpu_smoke · 2026-12-01 10:00 · bbbbbbb",
    ]
    one = an.load_results([tmp_path / "results" / "cpu_smoke"])
    assert set(an.series_names(one)) == {"full"}  # one run: no qualifier


def test_run_label_counts_other_commits_and_survives_missing_provenance(tmp_path):
    from segbench import runs

    write_cells(tmp_path / "r", [row(git_sha="c" * 40), row(git_sha="c" * 40), row(git_sha="d" * 40)])
    assert runs.run_table(an.load_results([tmp_path / "r"]))["run"].tolist() == [
        "r · start unknown · ccccccc+1"
    ]
    bare = an.conform(pd.DataFrame([row()]))
    assert bare["run"].tolist() == ["run · start unknown · no git sha"]


# ------------------------------------------------------------------------------------ no failures, intervals


def test_scaling_view_without_failures_has_no_phantom_rows():
    # The shipped example has no failed cell. Assigning a full-length Series to the empty failure
    # frame made pandas 3 adopt its index: one row of None per cell ("18 cell(s) not ok").
    df = an.conform(frame([row(context_len=c, peak_prefill_mem_bytes=c * 1000) for c in (1024, 2048)]))
    view = an.scaling_view(df, "peak_prefill_mem_bytes")
    assert view.failures.empty and view.estimate.empty
    assert view.measured["context_len"].tolist() == [1024, 2048]
    failing = an.conform(frame([row(), row(context_len=8192, status="oom")]))
    assert an.scaling_view(failing, "peak_prefill_mem_bytes").failures["context_len"].tolist() == [8192]


def test_single_process_timing_gets_its_own_spread_and_says_so():
    df = frame(
        [
            row(ttft_s=0.5, ttft_s_all=[0.45, 0.5, 0.62]),  # one process: min–max of its timings
            row(context_len=8192, ttft_s=1.0, ttft_s_all=[1.0]),  # one timing: no spread at all
            row(context_len=16384, ttft_s=2.0, ttft_s_all=[1.9, 2.1]),
            row(context_len=16384, ttft_s=4.0, ttft_s_all=[3.9, 4.1], repeat_group=1),  # two processes
        ]
    )
    pts = an.metric_points(an.conform(df), ["ttft_s"]).set_index("context_len")
    assert (pts.loc[4096, "ttft_s_ci_low"], pts.loc[4096, "ttft_s_ci_high"]) == (0.45, 0.62)
    assert pts.loc[4096, "ttft_s_interval"] == an.INTERVAL_RANGE
    assert math.isnan(pts.loc[8192, "ttft_s_ci_low"]) and pts.loc[8192, "ttft_s_interval"] == ""
    # Repeats in separate processes: the t-interval over them (mean 3, s = 1.414, t1 = 12.7062).
    assert pts.loc[16384, "ttft_s_ci_high"] == pytest.approx(3 + 12.7062 * math.sqrt(2) / math.sqrt(2))
    assert pts.loc[16384, "ttft_s_interval"] == an.INTERVAL_CI95


# ------------------------------------------------------------------------------------ failures on the Pareto view


def test_pareto_view_names_configurations_that_failed():
    df = latency_and_accuracy()
    df = pd.concat(
        [
            df,
            frame(
                [
                    row(
                        method="snapkv",
                        label="snapkv",
                        context_len=8192,
                        status="timeout",
                        status_detail="600 s",
                    )
                ]
            ),
            frame(
                [row(method="longgen", label="longgen", status="error", repeat_group=1, status_detail="boom")]
            ),
        ],
        ignore_index=True,
    )
    view = an.pareto_view(an.conform(df), "peak_prefill_mem_bytes", "ttft_s")
    failed = view.failed[["context_len", "series", "status", "status_detail", "cells", "ok_too"]]
    assert failed.values.tolist() == [
        [4096, "longgen", "error", "boom", 1, True],  # its other repeat is ok: on the plot too
        [8192, "full", "oom", "CUDA OOM", 1, False],
        [8192, "snapkv", "timeout", "600 s", 1, False],
    ]
    # A context where nothing finished still gets a panel, to say so.
    assert view.contexts == [4096, 8192]
    only_4k = an.pareto_view(an.conform(df), "peak_prefill_mem_bytes", "ttft_s", contexts=[4096])
    assert only_4k.failed["series"].tolist() == ["longgen"]


# ------------------------------------------------------------------------------------ timeline


def synthetic_trace(config_hash: str, weights: int, peak: int, ttft: float, shape: str, n: int = 200) -> dict:
    """A trace as the worker writes it (the Timeline contract): memory above the weights either climbs
    layer by layer to its peak at the end of prefill ("climb") or saws under a flat ceiling ("flat")."""
    t = np.linspace(0.0, ttft, n)
    if shape == "climb":
        extra = np.floor(np.linspace(0, 8, n, endpoint=False) + 1) / 8  # 8 layers, one step each
    else:
        extra = 0.6 + 0.4 * (np.arange(n) % 25 == 24)  # one segment's activations at a time
    b = (weights + extra * (peak - weights)).astype(int)
    return {
        "config_hash": config_hash,
        "source": "cuda_allocated",
        "t_s": t.round(6).tolist(),
        "bytes": b.tolist(),
        "nvml_used_bytes": None,
        "ttft_s": ttft,
        "weights_bytes": weights,
    }


def write_trace(suite_dir, trace: dict) -> None:
    traces = suite_dir / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    (traces / f"{trace['config_hash']}.json").write_text(json.dumps(trace))


def test_timeline_view_overlays_one_trace_per_series(tmp_path):
    from segbench import timeline as tl

    suite = tmp_path / "s"
    rows = [
        row(label="full", config_hash="f0", peak_prefill_mem_bytes=3 * GIB, weights_bytes=GIB),
        row(label="full", config_hash="f1", repeat_group=1, peak_prefill_mem_bytes=3 * GIB),
        row(method="segmented", label="seg", config_hash="s0", peak_prefill_mem_bytes=GIB + GIB // 2),
        row(method="snapkv", label="snapkv", config_hash="k0", status="oom", status_detail="OOM"),
        row(method="longgen", label="longgen", config_hash="l0"),  # no trace
        row(label="full", config_hash="f-8k", context_len=8192),
    ]
    write_cells(suite, rows)
    write_trace(suite, synthetic_trace("f0", GIB, 3 * GIB, 1.0, "climb"))
    write_trace(suite, synthetic_trace("f1", GIB, 3 * GIB, 1.1, "climb"))
    write_trace(suite, synthetic_trace("s0", GIB, GIB + GIB // 2, 1.2, "flat"))
    write_trace(suite, synthetic_trace("k0", GIB, 2 * GIB, 0.4, "climb", n=50))  # died mid-prefill
    write_trace(suite, synthetic_trace("f-8k", GIB, 5 * GIB, 2.0, "climb"))
    (suite / "traces" / "l0.json").write_text('{"t_s": [0, 1], "bytes": [1]}')  # broken: said, skipped
    df = an.load_results([suite])
    assert tl.contexts_with_traces(df) == [4096, 8192]
    view = tl.timeline_view(df, 4096)
    summary = view.summary.set_index("series")
    assert sorted(summary.index) == ["full", "seg", "snapkv"]
    assert summary.loc["full", "config_hash"] == "f0"  # the first repeat
    # Full climbs to its peak at the end of prefill; segmented's peak is no higher than its ceiling.
    assert summary.loc["full", "peak_bytes"] == 3 * GIB and summary.loc["full", "t_peak_s"] > 0.85
    assert summary.loc["seg", "peak_bytes"] == GIB + GIB // 2
    assert summary.loc["snapkv", "status"] == "oom" and summary.loc["snapkv", "samples"] == 50
    assert view.weights_bytes == GIB
    assert view.untraced["series"].tolist() == ["longgen"]
    assert len(view.notes) == 1 and "l0.json" in view.notes[0]


def test_read_trace_rejects_what_breaks_the_contract(tmp_path):
    from segbench import timeline as tl

    good = synthetic_trace("h", GIB, 2 * GIB, 1.0, "climb", n=5)
    cases = {
        "not an object": [1, 2],
        "equally long": good | {"bytes": good["bytes"][:-1]},
        "not a list of numbers": good | {"t_s": ["0", "1"]},
        "backwards": good | {"t_s": [0.0, 0.2, 0.1, 0.3, 0.4]},
        "nvml": good | {"nvml_used_bytes": [1, 2]},
    }
    for needle, obj in cases.items():
        path = tmp_path / "t.json"
        path.write_text(json.dumps(obj))
        with pytest.raises(tl.TraceError, match=needle.split()[0]):
            tl.read_trace(path)
    path.write_text(json.dumps(good))
    trace = tl.read_trace(path)
    assert trace.weights_bytes == GIB and trace.ttft_s == 1.0 and len(trace.t_s) == 5


def test_decimate_keeps_the_peak():
    from segbench import timeline as tl

    t = np.arange(10_000, dtype=float)
    y = np.zeros(10_000)
    y[7_777] = 5.0
    dt, dy = tl.decimate(t, y, 100)
    assert len(dt) == 100 and dy.max() == 5.0 and 7_777.0 in dt
