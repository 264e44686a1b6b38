"""Every dashboard page under Streamlit's AppTest: it renders, and its controls change the figure.

The results are synthesized from segbench.schema.empty_row(), never typed into the app.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip(
    "streamlit", reason="the dashboard extra is not installed: pip install 'segbench[dashboard]'"
)
pytest.importorskip(
    "plotly", reason="the dashboard extra is not installed: pip install 'segbench[dashboard]'"
)

from streamlit.testing.v1 import AppTest  # noqa: E402

from segbench.schema import empty_row  # noqa: E402
from tests.test_analysis import synthetic_trace, write_trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboard" / "app.py"
EXAMPLES = ROOT / "results" / "examples"
GIB = 2**30
CONTEXTS = (4096, 8192, 16384, 32768)
# A small GQA model: 16 layers x 8 KV heads x 64 dims x K and V x 2 bytes per token.
KV_BYTES_PER_TOKEN = 16 * 8 * 64 * 2 * 2
WEIGHTS = 1 * GIB


def _kv_tokens(method: str, params: dict, ctx: int) -> int:
    if method in ("snapkv", "longgen"):
        return min(ctx, params["budget"])
    if method == "streamingllm":
        return min(ctx, params["sink"] + params["window"])
    return ctx


def _activation_tokens(method: str, params: dict, ctx: int) -> int:
    # Full attention materialises per-token activations over the whole prompt; chunked methods
    # only over one segment.
    return min(ctx, params["segment"]) if method == "segmented" else ctx


def _base(method: str, label: str, params: dict, ctx: int, rep: int) -> dict:
    r = empty_row()
    r.update(
        suite="synthetic",
        method=method,
        label=label,
        params=json.dumps(params, sort_keys=True),
        model="tiny-random-gqa",
        model_trained=False,
        dtype="bfloat16",
        device="cuda",
        context_len=ctx,
        decode_tokens=32,
        task="",
        repeat_group=rep,
        config_hash=f"{label}-{ctx}-{rep}",
        weights_bytes=WEIGHTS,
        peak_mem_source="cuda_max_allocated",
        attention_backend="sdpa:flash",
        git_sha="0123456789abcdef0123456789abcdef01234567",
        git_dirty=False,
        segbench_version="0.1.0",
        python="3.11.7",
        torch="2.11.0",
        transformers="5.17.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        cpu_name="AMD EPYC 9454",
        hostname="node-07",
        launcher="local",
        started_at=f"2025-01-01T00:{ctx % 60:02d}:{rep:02d}Z",
    )
    kv = _kv_tokens(method, params, ctx) * KV_BYTES_PER_TOKEN
    r["est_kv_cache_bytes"] = kv
    r["est_peak_prefill_bytes"] = WEIGHTS + kv + _activation_tokens(method, params, ctx) * 96 * 1024
    return r


METHODS = (
    ("full", "full", {}),
    ("segmented", "segmented-4k", {"segment": 4096}),
    ("longgen", "longgen", {"budget": 4096}),
    ("snapkv", "snapkv-1k", {"budget": 1024}),
    ("snapkv", "snapkv-2k", {"budget": 2048}),
    ("streamingllm", "streamingllm", {"sink": 4, "window": 2044}),
)
# Where a cell did not finish ok: (label, context) -> (status, detail).
FAILURES = {
    ("full", 32768): ("oom", "torch.OutOfMemoryError: CUDA out of memory"),
    ("longgen", 32768): ("timeout", "cell exceeded its 600 s limit"),
    ("streamingllm", 4096): ("skipped", "window + sink >= context: identical to full"),
    ("snapkv-2k", 16384): ("error", "RuntimeError: shape mismatch in observation window"),
}


def synthetic_rows(repeats: int = 2, seed: int = 0, failures: dict | None = None) -> list[dict]:
    """Latency cells (with repeats) and `niah` accuracy cells, from a simple cost model plus noise.

    Failed cells keep their analytic estimates (`est_*`), as the worker writes them.
    """
    rng = random.Random(seed)
    failures = FAILURES if failures is None else failures
    rows = []
    for method, label, params in METHODS:
        for ctx in CONTEXTS:
            failure = failures.get((label, ctx))
            for rep in range(repeats):
                r = _base(method, label, params, ctx, rep)
                if failure:
                    r["status"], r["status_detail"] = failure
                    rows.append(r)
                    continue
                noise = 1 + rng.uniform(-0.03, 0.03)
                r["status"] = "ok"
                r["kv_cache_bytes"] = r["est_kv_cache_bytes"]
                r["peak_prefill_mem_bytes"] = int(r["est_peak_prefill_bytes"] * (1 + rng.uniform(0, 0.02)))
                r["peak_prefill_over_weights_bytes"] = r["peak_prefill_mem_bytes"] - WEIGHTS
                r["cuda_max_allocated_bytes"] = r["peak_prefill_mem_bytes"]
                attn = ctx * _activation_tokens(method, params, ctx) / 4096**2
                r["ttft_s"] = (0.05 * ctx / 4096 + 0.02 * attn + (0.01 if method != "full" else 0)) * noise
                r["ttft_s_all"] = [r["ttft_s"]] * 3
                r["prefill_tokens_per_s"] = ctx / r["ttft_s"]
                r["decode_ms_p50"] = (8 + r["kv_cache_bytes"] / GIB * 6) * noise
                r["decode_ms_p90"] = r["decode_ms_p50"] * 1.1
                r["decode_ms_p99"] = r["decode_ms_p50"] * 1.3
                r["decode_tokens_per_s"] = 1000 / r["decode_ms_p50"]
                r["output_token_ids"] = list(range(32))
                r["duration_s"] = 20 + r["ttft_s"] * 5
                rows.append(r)
            acc = _base(method, label, params, ctx, 0)
            acc.update(task="niah", decode_tokens=16, config_hash=f"{label}-{ctx}-niah")
            if failure:
                acc["status"], acc["status_detail"] = failure
            else:
                kept = _kv_tokens(method, params, ctx) / ctx
                score = round(0.1 + 0.05 * kept + rng.uniform(0, 0.05), 3)  # random weights: chance
                acc.update(status="ok", n=50, score=score, score_ci_low=max(0, score - 0.1))
                acc["score_ci_high"] = min(1, score + 0.1)
            rows.append(acc)
    return rows


def write_suite(suite_dir: Path, rows: list[dict], traces: bool = False) -> Path:
    """Cell files, and with `traces` a memory trace (the Timeline contract) per repeat-0 latency cell."""
    cells = suite_dir / "cells"
    cells.mkdir(parents=True)
    for i, r in enumerate(rows):
        (cells / f"{i:05d}-{r['config_hash']}.json").write_text(json.dumps(r))
        if traces and not r["task"] and r["repeat_group"] == 0 and r["status"] in ("ok", "oom"):
            peak = r["peak_prefill_mem_bytes"] or r["est_peak_prefill_bytes"]
            ttft = r["ttft_s"] or 0.5
            shape = "flat" if r["method"] == "segmented" else "climb"
            write_trace(suite_dir, synthetic_trace(r["config_hash"], WEIGHTS, peak, ttft, shape))
    return suite_dir


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """One run of the synthetic suite, failures and memory traces included."""
    root = write_suite(tmp_path / "results" / "run_a", synthetic_rows(), traces=True)
    monkeypatch.setenv("SEGBENCH_RESULTS", str(root))
    return root


@pytest.fixture
def clean(tmp_path, monkeypatch) -> Path:
    """One run where every cell finished ok (as in the shipped example)."""
    root = write_suite(tmp_path / "results" / "clean", synthetic_rows(failures={}))
    monkeypatch.setenv("SEGBENCH_RESULTS", str(root))
    return root


@pytest.fixture
def two_runs(tmp_path, monkeypatch) -> Path:
    """A parent of two runs of the same cells; run B started a day later and every TTFT is 20% lower."""
    root = tmp_path / "results"
    write_suite(root / "run_a", synthetic_rows())
    faster = []
    for r in synthetic_rows():
        if r["ttft_s"] is not None:
            r["ttft_s"] *= 0.8
        r["started_at"] = r["started_at"].replace("2025-01-01", "2025-01-02")
        faster.append(r)
    write_suite(root / "run_b", faster)
    monkeypatch.setenv("SEGBENCH_RESULTS", str(root))
    return root


def start(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    if page is not None:
        at.session_state["page"] = page  # open on that page: one script run fewer than clicking
    at.run()
    assert not at.exception, at.exception
    return at


def chart(at: AppTest, key: str) -> dict:
    """The plotly figure a page sent, as the JSON spec the browser would draw."""
    charts = [c for c in at.get("plotly_chart") if key in c.proto.id]
    assert len(charts) == 1, f"expected one chart {key!r}, found {len(charts)}"
    return json.loads(charts[0].proto.spec)


def table(at: AppTest, column: str):
    """The one dataframe on the page with `column` (st.dataframe has no key without selections)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, f"expected one table with {column!r}, found {len(found)}"
    return found[0]


def traces(spec: dict, role: str) -> list[dict]:
    return [t for t in spec["data"] if (t.get("meta") or {}).get("role") == role]


# ------------------------------------------------------------------------------------ Pareto


def by_context(spec: dict, role: str) -> dict[int, dict]:
    return {t["meta"]["context_len"]: t for t in traces(spec, role)}


def front_sizes(spec: dict) -> dict[int, int]:
    return {c: len(t["x"]) for c, t in by_context(spec, "pareto-front").items()}


def test_pareto_renders_fronts_per_context(results):
    spec = chart(start(), "pareto_chart")
    assert list(front_sizes(spec)) == [4096, 8192, 16384, 32768]
    # Every ok configuration is drawn once per context: 6 methods, less streamingllm skipped at 4K,
    # snapkv-2k errored at 16K, full OOM and longgen timeout at 32K.
    drawn = {c: 0 for c in CONTEXTS}
    flagged = {c: 0 for c in CONTEXTS}
    for t in traces(spec, "points"):
        drawn[t["meta"]["context_len"]] += len(t["x"])
        flagged[t["meta"]["context_len"]] += sum(t["meta"]["on_front"])
        on_front = set(t["meta"]["on_front"])
        assert len(on_front) == 1  # a trace is all front or all dominated
        assert t["marker"]["color"].endswith(",0.25)") != on_front.pop()  # dominated ones are faded
    assert drawn == {4096: 5, 8192: 6, 16384: 5, 32768: 4}
    assert flagged == front_sizes(spec)  # the step line passes through exactly the flagged points
    # From 16K on, segmented (bounded activations) has both the lowest memory and the lowest TTFT:
    # it alone is the front and dominates every other cell.
    assert front_sizes(spec)[16384] == front_sizes(spec)[32768] == 1
    at_32k = [t for t in traces(spec, "points") if t["meta"]["context_len"] == 32768]
    segmented = next(t for t in at_32k if t["name"] == "segmented-4k")
    assert segmented["meta"]["on_front"] == [True]
    assert by_context(spec, "pareto-front")[32768]["x"] == segmented["x"]
    others = [h for t in at_32k if t["name"] != "segmented-4k" for h in t["hovertext"]]
    assert len(others) == 3 and all("dominated by segmented-4k" in h for h in others)
    assert "Peak prefill memory (GiB)" in json.dumps(spec["layout"])
    # Hover text is escaped once: plotly shows &quot; literally.
    hover = [h for t in traces(spec, "points") for h in t["hovertext"]]
    assert '{"segment":4096}' in " ".join(hover) and "&quot;" not in " ".join(hover)


def test_pareto_names_what_failed_and_why(results):
    at = start()
    # 4K: streamingllm skipped; 16K: snapkv-2k errored; 32K: full OOM, longgen timeout.
    said = " ".join(w.value for w in at.warning)
    assert "Not on the plot" in said
    assert "4K: **streamingllm** (skipped)" in said and "16K: **snapkv-2k** (error)" in said
    assert "32K: **full** (OOM), **longgen** (timeout)" in said
    why = table(at, "status_detail")
    assert why.set_index("series").loc["full", "status_detail"].startswith("torch.OutOfMemoryError")
    spec = chart(at, "pareto_chart")
    notes = {a["name"]: a for a in spec["layout"]["annotations"] if a.get("name", "").startswith("not-ok")}
    assert set(notes) == {"not-ok:4096", "not-ok:16384", "not-ok:32768"}
    assert (
        "full: OOM" in notes["not-ok:32768"]["text"] and "longgen: timeout" in notes["not-ok:32768"]["text"]
    )
    assert "CUDA out of memory" in notes["not-ok:32768"]["hovertext"]


def test_pareto_and_scaling_without_failures(clean):
    at = start()
    assert not any("Not on the plot" in w.value for w in at.warning)
    spec = chart(at, "pareto_chart")
    assert not [a for a in spec["layout"].get("annotations", []) if a.get("name", "").startswith("not-ok")]
    at.radio(key="page").set_value("Scaling").run()
    assert not at.exception
    spec = chart(at, "scaling_chart")
    # One panel: its x axis has the ticks and the title (no empty failure strip holding them).
    assert traces(spec, "failure") == [] and "xaxis2" not in spec["layout"]
    xaxis = spec["layout"]["xaxis"]
    assert xaxis["ticktext"] == ["4K", "8K", "16K", "32K"] and xaxis["title"]["text"].startswith("Context")
    assert not any("not ok" in e.label for e in at.expander)
    assert any("finished ok" in c.value for c in at.caption)


def test_two_runs_are_told_apart(two_runs):
    at = start("Scaling")
    spec = chart(at, "scaling_chart")
    names = {t["meta"]["series"] for t in traces(spec, "measured")}
    assert len(names) == 12  # 6 labels x 2 runs, never pooled into one zig-zag line
    assert "full · run_a · 2025-01-01 00:04 · 0123456" in names
    assert "full · run_b · 2025-01-02 00:04 · 0123456" in names
    runs = at.multiselect(key="filter_source")
    assert runs.options == ["run_a · 2025-01-01 00:04 · 0123456", "run_b · 2025-01-02 00:04 · 0123456"]


def test_shipped_example_in_mib_with_an_honest_note(monkeypatch):
    # The committed CPU example: no failures, memory of tens of MiB, one process per cell.
    monkeypatch.setenv("SEGBENCH_RESULTS", str(EXAMPLES / "cpu_smoke"))  # one run, 1K-4K
    at = start()
    spec = chart(at, "pareto_chart")
    assert spec["layout"]["xaxis"]["title"]["text"] == "Peak prefill memory (MiB)"
    assert all(10 < x < 100 for t in traces(spec, "points") for x in t["x"])  # MiB, as the tables say
    assert any("one process" in i.value and "min–max" in i.value for i in at.info)
    with_bars = [t for t in traces(spec, "points") if t.get("error_y")]
    assert with_bars and all(len(t["error_y"]["array"]) == len(t["y"]) for t in with_bars)
    at.radio(key="page").set_value("Scaling").run()
    spec = chart(at, "scaling_chart")
    assert spec["layout"]["xaxis"]["ticktext"] == ["1K", "2K", "4K"]
    assert spec["layout"]["yaxis"]["title"]["text"] == "Peak prefill memory (MiB)"


def test_pareto_axis_and_context_controls_change_the_figure(results):
    at = start()
    assert front_sizes(chart(at, "pareto_chart"))[32768] == 1
    at.selectbox(key="pareto_y").set_value("decode_ms_p50").run()
    assert not at.exception
    spec = chart(at, "pareto_chart")
    assert "Decode latency p50 (ms)" in json.dumps(spec["layout"])
    # Decode reads the stored KV: at 32K snapkv-1k's 1K-token cache decodes faster than segmented's
    # full one, so the front now holds both.
    assert front_sizes(spec)[32768] == 2
    at.multiselect(key="pareto_contexts").set_value([8192]).run()
    assert list(front_sizes(chart(at, "pareto_chart"))) == [8192]


def test_pareto_accuracy_axis_warns_about_chance(results):
    at = start()
    assert not any("chance" in w.value for w in at.warning)
    at.selectbox(key="pareto_y").set_value("score:niah").run()
    assert not at.exception
    assert any("chance" in w.value for w in at.warning)
    assert "chance" in chart(at, "pareto_chart")["layout"]["title"]["text"]


def test_pareto_budget_highlights_best_under_it(results):
    at = start()
    assert traces(chart(at, "pareto_chart"), "best-under-budget") == []
    at.checkbox(key="pareto_budget_on").check().run()
    at.slider(key="pareto_budget").set_value(1.95).run()
    assert not at.exception
    spec = chart(at, "pareto_chart")
    # Fastest cell under 1.95 GiB: full at 4K (everything fits); segmented at 8K (full needs 2 GiB)
    # and at 16K (the only one that fits); nothing fits at 32K.
    best = {c: t["hovertext"] for c, t in by_context(spec, "best-under-budget").items()}
    assert list(best) == [4096, 8192, 16384]
    assert [h[0].split("<b>")[2].split("</b>")[0] for h in best.values()] == [
        "full",
        "segmented-4k",
        "segmented-4k",
    ]
    # The budget line sits on the memory axis of every panel.
    assert [s["x0"] for s in spec["layout"]["shapes"]] == [1.95] * 4
    loose = at.slider(key="pareto_budget")
    loose.set_value(loose.max).run()
    assert list(by_context(chart(at, "pareto_chart"), "best-under-budget")) == list(CONTEXTS)


# ------------------------------------------------------------------------------------ Scaling


def test_scaling_shows_failures_and_estimates(results):
    at = start("Scaling")
    spec = chart(at, "scaling_chart")
    failures = {t["meta"]["status"]: list(zip(t["x"], t["y"], strict=True)) for t in traces(spec, "failure")}
    # Memory is a latency-cell metric: both repeats of each failed latency cell, at its context.
    assert set(failures) == {"oom", "timeout", "skipped", "error"}
    assert set(failures["oom"]) == {(32768, "full")} and len(failures["oom"]) == 2
    assert set(failures["timeout"]) == {(32768, "longgen")}
    estimates = traces(spec, "estimate")
    assert len(estimates) == len(traces(spec, "measured")) == 6
    assert all(t["line"]["dash"] == "dash" for t in estimates)
    # The failed cells' own estimates continue the dashed lines where the OOM and timeout happened.
    by_series = {t["meta"]["series"]: t["x"] for t in estimates}
    assert by_series["full"][-1] == by_series["longgen"][-1] == 32768
    # The failure strip has a labelled row for each series that failed somewhere, and no others.
    assert spec["layout"]["yaxis2"]["categoryarray"] == ["streamingllm", "snapkv-2k", "longgen", "full"]
    xaxis = spec["layout"]["xaxis"]
    assert xaxis["type"] == "log" and xaxis["ticktext"] == ["4K", "8K", "16K", "32K"]


def test_scaling_metric_control_changes_the_figure(results):
    at = start("Scaling")
    at.selectbox(key="scaling_metric").set_value("ttft_s").run()
    assert not at.exception
    spec = chart(at, "scaling_chart")
    assert traces(spec, "estimate") == []  # TTFT has no analytic estimate
    full = next(t for t in traces(spec, "measured") if t["meta"]["series"] == "full")
    assert full["x"] == [4096, 8192, 16384]  # OOM at 32K: no value there
    assert full["y"] == sorted(full["y"])  # TTFT grows with the prompt
    at.selectbox(key="scaling_metric").set_value("score:niah").run()
    assert any("chance" in w.value for w in at.warning)
    spec = chart(at, "scaling_chart")
    assert spec["layout"]["yaxis"]["title"]["text"] == "Accuracy (niah, ×100)"
    assert all(5 < y < 30 for t in traces(spec, "measured") for y in t["y"])  # stored 0.1-0.2, shown x100


# ------------------------------------------------------------------------------------ Cells


def test_cells_lists_failures_and_provenance(results):
    at = start("Cells")
    at.multiselect(key="cells_status").set_value(["oom"]).run()
    assert not at.exception
    cells = table(at, "status_detail")
    # Both latency repeats and the niah cell of full at 32K ran out of memory.
    assert set(cells["status"]) == {"oom"} and set(cells["label"]) == {"full"} and len(cells) == 3
    provenance = table(at, "meaning").set_index("column")["value"]
    assert provenance["status_detail"].startswith("torch.OutOfMemoryError")
    assert provenance["gpu_name"] == "NVIDIA H100 80GB HBM3" and provenance["source"].endswith("run_a")
    at.selectbox(key="cells_kind").set_value("niah").run()
    assert len(table(at, "status_detail")) == 1
    assert any("chance" in w.value for w in at.warning)


# ------------------------------------------------------------------------------------ Compare


def test_compare_runs_ratios(two_runs):
    at = start("Compare runs")
    # B is the newest run, A the one before: B / A < 1 means the newest run got cheaper.
    assert at.selectbox(key="compare_a").value.startswith("run_a")
    assert at.selectbox(key="compare_b").value.startswith("run_b")
    compared = table(at, "present")
    both = compared[compared["present"] == "both"]
    assert both["TTFT B / A"].dropna().round(6).eq(0.8).all() and both["TTFT B / A"].notna().any()
    # Values are in the unit their header names: 1-5 GiB here, not raw bytes.
    mem = both["Peak prefill memory A (GiB)"].dropna()
    assert mem.between(1, 6).all() and not mem.empty
    spec = chart(at, "compare_chart")
    assert all(abs(y - 1.0) < 1e-9 for t in traces(spec, "ratio") for y in t["y"])  # memory: unchanged
    at.selectbox(key="compare_plot_metric").set_value("ttft_s").run()
    spec = chart(at, "compare_chart")
    assert all(abs(y - 0.8) < 1e-6 for t in traces(spec, "ratio") for y in t["y"])


def test_compare_needs_two_runs(two_runs):
    at = start("Compare runs")
    runs = at.multiselect(key="filter_source")
    runs.set_value([v for v in runs.value if v.startswith("run_a")]).run()
    assert not at.get("plotly_chart")
    assert any("needs two runs" in i.value for i in at.info)


def test_empty_results_dir_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_RESULTS", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    assert any("No results found" in e.value for e in at.error)


def test_loading_problems_are_shown_not_fatal(results):
    (results / "cells" / "zz-half-written.json").write_text('{"status": "o')
    at = start("Cells")
    assert any(
        "problem(s) while loading" in w.value and "zz-half-written.json" in w.value for w in at.warning
    )
    assert len(table(at, "status_detail")) == len(synthetic_rows())  # every readable cell is listed


def test_consistency_page_shows_the_training_table(tmp_path, monkeypatch):
    import json as _json

    summary = {
        "n": 40,
        "chance": 6.25,
        "seg_trained": {
            "seg_infer": {"score": 50.0, "ci95": [35.0, 65.0]},
            "full_infer": {"score": 45.0, "ci95": [30.0, 60.0]},
        },
        "full_trained": {
            "seg_infer": {"score": 10.0, "ci95": [4.0, 23.0]},
            "full_infer": {"score": 55.0, "ci95": [40.0, 69.0]},
        },
        "curves": {
            "seg_trained": [{"step": 0, "full_infer": 6.0, "seg_infer": 7.0}, {"step": 100, "full_infer": 40.0, "seg_infer": 48.0}],
            "full_trained": [{"step": 0, "full_infer": 5.0, "seg_infer": 6.0}, {"step": 100, "full_infer": 52.0, "seg_infer": 11.0}],
        },
        "provenance": {"git_sha": "abc"},
    }
    (tmp_path / "consistency").mkdir()
    (tmp_path / "consistency" / "summary.json").write_text(_json.dumps(summary))
    monkeypatch.setenv("SEGBENCH_RESULTS", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    at.radio(key="page").set_value("Consistency").run()
    assert not at.exception
    shown = at.dataframe[0].value
    assert shown.loc["trained full", "segmented inference"] == "10.0 [4.0, 23.0]"
    assert shown.loc["trained segmented", "full inference"] == "45.0 [30.0, 60.0]"
    from segbench.dashboard.page_consistency import curve_frame

    curves = curve_frame(summary)  # what the learning-curve chart draws: one line per (trained, inferred)
    assert list(curves["step"]) == [0, 100] and curves["trained full / segmented inference"].tolist() == [6.0, 11.0]
    assert len(curves.columns) == 5 and [h.value for h in at.subheader] == ["Learning curves"]


def test_compare_preselects_metrics_with_data(tmp_path, monkeypatch):
    latency_only = [r for r in synthetic_rows() if not r["task"]]
    write_suite(tmp_path / "results" / "a", latency_only)
    write_suite(tmp_path / "results" / "b", latency_only)
    monkeypatch.setenv("SEGBENCH_RESULTS", str(tmp_path / "results"))
    at = start("Compare runs")
    assert "score" not in at.multiselect(key="compare_metrics").value  # no accuracy rows: not offered
    assert at.selectbox(key="compare_plot_metric").value == "peak_prefill_mem_bytes"


# ------------------------------------------------------------------------------------ Timeline


def test_timeline_overlays_methods_at_one_context(results):
    at = start("Timeline")
    assert at.selectbox(key="timeline_ctx").value == 32768  # the longest context by default
    spec = chart(at, "timeline_chart")
    lines = {t["meta"]["series"]: t for t in traces(spec, "timeline")}
    # Every latency label with a trace at 32K; full's OOM cell has one too (where it died).
    assert set(lines) == {"full", "segmented-4k", "snapkv-1k", "snapkv-2k", "streamingllm", "longgen"} - {
        "longgen"
    }
    assert all(len(t["x"]) == len(t["y"]) > 10 for t in lines.values())
    assert spec["layout"]["yaxis"]["title"]["text"] == "Memory (GiB)"
    peaks = {t["meta"]["series"]: t for t in traces(spec, "peak")}
    # Full climbs to its peak at the end of prefill; segmented stays flat below it.
    assert peaks["full"]["y"][0] > peaks["segmented-4k"]["y"][0]
    assert max(lines["segmented-4k"]["y"]) == pytest.approx(peaks["segmented-4k"]["y"][0])
    assert any("No trace at this context for: longgen (timeout)" in c.value for c in at.caption)
    at.checkbox(key="timeline_over_weights").check().run()
    spec = chart(at, "timeline_chart")
    assert spec["layout"]["yaxis"]["title"]["text"].startswith("Memory minus weights")
    at.selectbox(key="timeline_ctx").set_value(4096).run()
    assert not at.exception
    assert {t["meta"]["series"] for t in traces(chart(at, "timeline_chart"), "timeline")} == {
        "full", "segmented-4k", "snapkv-1k", "snapkv-2k", "longgen"
    }  # fmt: skip


def test_timeline_without_traces_says_how_to_get_them(clean):
    at = start("Timeline")
    assert not at.get("plotly_chart")
    assert any("No memory traces" in i.value for i in at.info)


# ------------------------------------------------------------------------------------ axes


def test_log_axes_get_few_round_labels(results):
    from segbench.figures import context_ticks

    at = start()
    at.checkbox(key="pareto_log_x").check().run()
    assert not at.exception
    spec = chart(at, "pareto_chart")
    # plotly's own log ticks label 2..9 of every decade, which overlapped in a narrow panel.
    xaxis = spec["layout"]["xaxis"]
    assert xaxis["type"] == "log" and 2 <= len(xaxis["tickvals"]) <= 7
    assert xaxis["ticktext"] == [f"{v:g}" for v in xaxis["tickvals"]]
    # Context ticks: never two labels closer than 1.45x (1000 and 1K overlap); the longest kept.
    assert context_ticks([1000, 1024, 2048, 3072, 4096]) == [1000, 2048, 4096]
    assert context_ticks([4096 * 2**i for i in range(6)]) == [4096 * 2**i for i in range(6)]


def test_pareto_axes_come_from_the_url(results):
    """`?page=Pareto&y=score:niah` (links, scripts/screenshots.py) opens the page on those axes."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["page"] = "Pareto"
    at.query_params["y"] = "score:niah"
    at.run()
    assert not at.exception
    assert at.selectbox(key="pareto_y").value == "score:niah"
    assert at.selectbox(key="pareto_x").value == "peak_prefill_mem_bytes"
