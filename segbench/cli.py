"""The `segbench` command. User mistakes print one line and exit 2; nothing else prints a traceback
unless SEGBENCH_DEBUG=1."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from segbench.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="segbench", description="Measure what long-context inference methods cost and buy.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a suite: every (method, context) cell in its own process")
    r.add_argument("suite", help="suite YAML file, e.g. suites/cpu_smoke.yaml")
    r.add_argument("--out", default="results", help="results root (default: results/)")
    r.add_argument("--device", choices=["cpu", "cuda"], help="override the suite's device")
    r.add_argument("--model", help="override the suite's model (preset name or local path)")
    r.add_argument("--contexts", help="override the suite's contexts, e.g. 1024,4k,8192")
    r.add_argument("--fresh", action="store_true", help="discard this suite's finished cells and run all again")
    r.add_argument("--retry-failed", action="store_true", help="re-run cells that ended in oom/timeout/error/killed")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    r.add_argument("--no-report", action="store_true", help="do not print the results table at the end")
    lg = r.add_argument_group("launcher (overrides the suite's launcher: section)")
    lg.add_argument("--launcher", choices=["local", "ray", "slurm"],
                    help="where cells run: this machine (default), a Ray cluster, or Slurm through submitit")
    lg.add_argument("--gpus-per-cell", type=_positive_int, metavar="N", help="GPUs each cell gets (default 1)")
    lg.add_argument("--max-parallel", type=_positive_int, metavar="N",
                    help="cells in flight at once (default: one per GPU group, the Ray cluster's size, or all on Slurm)")
    lg.add_argument("--slurm-partition", metavar="P", help="Slurm partition")
    lg.add_argument("--slurm-time", type=_slurm_time, metavar="T", help="Slurm time limit per cell: minutes or [D-]H:MM:SS "
                    "(default: the suite's timeout_s + 10 min)")
    lg.add_argument("--slurm-account", metavar="A", help="Slurm account to charge")

    rep = sub.add_parser("report", help="consolidate results into results.parquet and print them")
    rep.add_argument("dir", nargs="?", default="results", help="a suite's results dir or a results root")
    rep.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    rep.add_argument("--html", metavar="FILE", help="also write the Pareto and scaling figures to one HTML file")

    sub.add_parser("methods", help="list registered methods with their parameters")
    sub.add_parser("models", help="list model presets with parameter count and KV bytes per token")

    e = sub.add_parser("estimate", help="analytic memory of methods at given contexts (runs nothing)")
    e.add_argument("--model", default="llama-3.1-8b")
    e.add_argument("--method", help="one method (default: every registered method with default params)")
    e.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter, repeatable")
    e.add_argument("--contexts", default="4k,8k,16k,32k,64k,128k")
    e.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cuda")

    d = sub.add_parser("dashboard", help="browse results in a Streamlit dashboard")
    d.add_argument("dirs", nargs="*", default=[], help="results dirs (default: results/)")
    d.add_argument("--port", type=int)
    d.add_argument("--host", default="127.0.0.1")

    data = sub.add_parser("data", help="generate accuracy data offline", add_help=False)
    data.add_argument("args", nargs=argparse.REMAINDER)

    t = sub.add_parser("train", help="train a tiny model with full or segmented execution (segbench train CONFIG)",
                       add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER)

    b = sub.add_parser("bench", help="micro-benchmarks (e.g. `segbench bench kernels`)", add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER)

    g = sub.add_parser("gpu-check", help="every GPU number from one command under a wall budget (make gpu-check)",
                       add_help=False)
    g.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in PASSTHROUGH:  # subcommands with parsers of their own get argv untouched
            return COMMANDS[argv[0]](argparse.Namespace(args=argv[1:]))
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"segbench: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `segbench report | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"segbench: interrupted ({signal.Signals(signum).name}); finished cells are saved, run the same "
              "command again to resume", file=sys.stderr)
        return 128 + signum
    except Exception as e:
        if os.environ.get("SEGBENCH_DEBUG"):
            raise
        print(f"segbench: internal error: {type(e).__name__}: {e} (set SEGBENCH_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def cmd_run(args) -> int:
    from segbench import report
    from segbench.runner import run_suite
    from segbench.suite import load_suite, parse_contexts

    contexts = parse_contexts(args.contexts) if args.contexts else None
    suite = load_suite(args.suite, device=args.device, model=args.model, contexts=contexts,
                       launcher=_launcher_flags(args))
    with _stop_on_signals():
        summary = run_suite(suite, Path(args.out), fresh=args.fresh, retry_failed=args.retry_failed,
                            progress=not args.no_progress)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    print(f"{suite.name}: ran {summary.ran} cells, reused {summary.reused}, in {summary.wall_s:.1f} s ({counts}) "
          f"with the {summary.launcher} launcher; results in {summary.suite_dir}")
    if not args.no_report:
        report.print_table(report.load(summary.suite_dir, warn_skipped=False), title=suite.name)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: cells in flight are killed, finished ones stay saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    """While a sweep runs, SIGTERM (and SIGHUP, unless ignored as under nohup) stop it like Ctrl-C."""

    def handler(signum, frame):
        raise Terminated(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _launcher_flags(args) -> dict:
    """The launcher flags given, shaped like the suite's `launcher:` section they override."""
    flags = {"kind": args.launcher, "gpus_per_cell": args.gpus_per_cell, "max_parallel": args.max_parallel}
    slurm = {"partition": args.slurm_partition, "time": args.slurm_time, "account": args.slurm_account}
    out = {k: v for k, v in flags.items() if v is not None}
    slurm = {k: v for k, v in slurm.items() if v is not None}
    if slurm:
        out["slurm"] = slurm
    return out


def _positive_int(text: str) -> int:
    from segbench.suite import MAX_PARALLEL

    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer up to {MAX_PARALLEL}")
    return int(text)


def _slurm_time(text: str) -> str:
    from segbench.suite import slurm_minutes

    try:
        slurm_minutes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def cmd_report(args) -> int:
    from segbench import report

    df = report.load(Path(args.dir))
    if args.format == "table":
        report.print_table(df)
    else:
        print(report.render(df, args.format))
    if args.html:
        from segbench.html_report import write_html

        try:
            write_html(df, Path(args.html), source=Path(args.dir))
        except ImportError as e:  # plotly missing: figures raise a subclass naming the extra
            raise UserError(f"HTML export is not available: {e}") from None
        except OSError as e:
            raise UserError(f"--html {args.html}: cannot write it ({e.strerror or e}); give a writable path") from None
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_methods(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from segbench.method import method_class, method_names
    from segbench.typed import describe_fields

    table = Table(title="registered methods", show_lines=True)
    for col in ("method", "lowers", "summary", "parameters (default)"):
        table.add_column(col, overflow="fold")
    for name in method_names():
        cls = method_class(name)
        params = "\n".join(f"{n}: {t} = {d!r}" for n, t, d in describe_fields(cls.Params)) or "-"
        table.add_row(name, ", ".join(cls.lowers) or "nothing (reference)", cls.summary, params)
    Console(width=max(140, Console().width)).print(table)
    return 0


def cmd_models(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from segbench.models import preset_names, preset_values, shape_of
    from segbench.report import human_bytes

    table = Table(title="model presets (random weights, real shapes)")
    for col in ("preset", "family", "layers", "heads q/kv", "head dim", "params", "KV/token bf16", "max context", "source"):
        table.add_column(col, overflow="fold")
    for name in preset_names():
        s = shape_of(name)
        table.add_row(name, s.model_type, str(s.num_layers), f"{s.num_heads}/{s.num_kv_heads}", str(s.head_dim),
                      f"{s.param_count() / 1e9:.3f} B", human_bytes(s.kv_bytes_per_token(2)),
                      str(s.max_position_embeddings), preset_values(name).get("source", ""))
    Console(width=max(160, Console().width)).print(table)
    return 0


def cmd_estimate(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from segbench.method import Unsupported, make_method, method_names
    from segbench.models import DTYPE_BYTES, shape_of
    from segbench.report import human_bytes
    from segbench.suite import parse_contexts

    shape = shape_of(args.model)
    contexts = parse_contexts(args.contexts)
    params = dict(_parse_param(p) for p in args.param)
    names = [args.method] if args.method else method_names()
    if params and not args.method:
        raise UserError("--param needs --method (parameters belong to one method)")
    table = Table(title=f"analytic memory: {args.model}, {args.dtype}, {args.device}")
    for col in ("method", "context", "weights", "stored KV", "peak prefill", "peak - weights"):
        table.add_column(col, justify="right")
    rows = [(name, name, params if args.method else {}) for name in names]
    if not args.method:
        # A method with both prefill modes (full, snapkv) shows its chunked one too: a chunked
        # dense prefill is the baseline a long-context user compares against first.
        rows = [r for name, label, p in rows for r in ((name, label, p), *(
            [(name, f"{label} (chunked)", {"prefill": "chunked"})] if _has_chunked_prefill(name) else []))]
    for name, label, method_params in rows:
        method = make_method(name, method_params, where="--param")
        for ctx in contexts:
            try:
                method.check(shape, ctx)
            except Unsupported as e:
                raise UserError(f"{name} cannot run {args.model} at {ctx}: {e}") from None
            est = method.estimate(shape, ctx, DTYPE_BYTES[args.dtype], args.device)
            table.add_row(label, str(ctx), human_bytes(est.weights_bytes), human_bytes(est.stored_kv_bytes),
                          human_bytes(est.peak_prefill_bytes), human_bytes(est.peak_over_weights_bytes))
    Console(width=max(120, Console().width)).print(table)
    return 0


def _has_chunked_prefill(name: str) -> bool:
    import dataclasses
    import typing

    from segbench.method import method_class

    fields = {f.name: f for f in dataclasses.fields(method_class(name).Params)}
    if "prefill" not in fields:
        return False
    hints = typing.get_type_hints(method_class(name).Params)
    return "chunked" in typing.get_args(hints.get("prefill")) and fields["prefill"].default != "chunked"


def _parse_param(text: str):
    import yaml

    if "=" not in text:
        raise UserError(f"--param {text!r}: write it as key=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError):
        raise UserError(f"--param {text!r}: the value is not valid YAML; quote it, e.g. {key.strip()}='...'") from None


def cmd_dashboard(args) -> int:
    try:
        from segbench.dashboard_launcher import launch
    except ImportError as e:
        raise UserError(f"the dashboard is not available ({e})") from None
    return launch(args.dirs or ["results"], args.port, args.host)


def cmd_data(args) -> int:
    rest = list(args.args)
    if not rest or rest[0] != "ruler":
        raise UserError("usage: segbench data ruler --task T --length N --n K --tokenizer PRESET|PATH --out FILE.jsonl")
    try:
        from segbench.accuracy.cli import data_ruler_main
    except ImportError as e:
        raise UserError(f"accuracy data generation is not available ({e})") from None
    return data_ruler_main(rest[1:])


def cmd_bench(args) -> int:
    rest = list(args.args)
    if not rest or rest[0] != "kernels":
        raise UserError("usage: segbench bench kernels [--contexts ...]")
    try:
        from segbench.kernels.bench import main as bench_main
    except ImportError as e:
        raise UserError(f"kernel benchmarks are not available ({e})") from None
    return bench_main(rest[1:])


def cmd_train(args) -> int:
    from segbench.train.cli import train_main

    return train_main(list(args.args))


def cmd_gpu_check(args) -> int:
    from segbench.gpucheck import main as gpu_check_main

    return gpu_check_main(list(args.args))


PASSTHROUGH = ("data", "bench", "train", "gpu-check")

COMMANDS = {
    "run": cmd_run,
    "report": cmd_report,
    "methods": cmd_methods,
    "models": cmd_models,
    "estimate": cmd_estimate,
    "dashboard": cmd_dashboard,
    "data": cmd_data,
    "bench": cmd_bench,
    "train": cmd_train,
    "gpu-check": cmd_gpu_check,
}

if __name__ == "__main__":
    sys.exit(main())
