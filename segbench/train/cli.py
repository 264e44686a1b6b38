"""`segbench train CONFIG.yaml [--eval-only] [--run NAME ...] [--no-progress]`.

Trains every run of the recipe (checkpoint + `train_log.jsonl` in the run's `out`), then writes the
2x2 consistency table (`eval.summary`) when the recipe has one full and one segmented run.
`--eval-only` skips training and evaluates the checkpoints already there.
Also runnable as `python -m segbench.train.cli CONFIG.yaml`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from segbench.errors import UserError
from segbench.train.config import RunConfig, TrainConfig, config_dict, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segbench train", description="Train tiny LMs with full or segmented attention.")
    p.add_argument("config", help="training recipe (YAML), e.g. train/consistency_toy.yaml")
    p.add_argument("--eval-only", action="store_true", help="skip training; evaluate the saved checkpoints")
    p.add_argument("--run", action="append", default=[], help="train only this run (repeatable); default all")
    p.add_argument("--no-eval", action="store_true", help="train only; do not write the 2x2 table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to train_log.jsonl)")
    return p


def train_one(cfg: TrainConfig, run: RunConfig, progress: bool) -> dict:
    """Train `run`, save its checkpoint with the record `segbench_train.json`; returns the record."""
    from segbench.segments import SEGMENTED_RULE
    from segbench.train.evaluate import fixed_sample_scores
    from segbench.train.loop import train_run
    from segbench.train.model import save_checkpoint

    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    result = train_run(cfg, run, out / "train_log.jsonl", progress=progress)
    result.model.requires_grad_(False)
    record = {
        "run": config_dict(run), "config": config_dict(cfg), "data_seed": cfg.data.seed, "init_seed": cfg.optim.seed,
        "steps": result.steps, "train_wall_s": round(result.wall_s, 1),
        "first_answer_loss": result.first_loss, "final_answer_loss": result.last_loss,
        # Held-out accuracy under both inferences every eval.curve_every steps (the summary copies it).
        "curve": result.curve,
        "init": result.init,
        # What a reload must reproduce (tests/test_train.py checks it on the shipped checkpoints).
        "fixed_sample": fixed_sample_scores(result.model, cfg),
        # Which segmented execution trained and scored it (a checkpoint from an older rule reloads
        # fine, but its segmented score is not comparable).
        "segmented_rule": SEGMENTED_RULE,
    }
    save_checkpoint(result.model, out, record)
    return record


def train_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    unknown = set(args.run) - {r.name for r in cfg.runs}
    if unknown:
        print(f"error: no run named {', '.join(sorted(unknown))} in {args.config}", file=sys.stderr)
        return 2
    if not args.eval_only:
        for run in cfg.runs:
            if args.run and run.name not in args.run:
                continue
            t0 = time.perf_counter()
            record = train_one(cfg, run, progress=not args.no_progress)
            print(f"{run.name}: {record['steps']} steps in {time.perf_counter() - t0:.0f} s, answer loss "
                  f"{record['first_answer_loss']:.3f} -> {record['final_answer_loss']:.3f}; saved to {run.out}")
    if args.no_eval:
        return 0
    if cfg.task == "ruler":
        # A RULER preset is evaluated where every method is: `segbench run` on a RULER suite.
        print("task ruler: no 2x2 table; evaluate the checkpoint with `segbench run` on a RULER suite (suites/ruler_cpu.yaml)")
        return 0
    from segbench.train.evaluate import summarize

    table = summarize(cfg, args.config)
    print(json.dumps({k: v for k, v in table.items() if k != "provenance"}, indent=2))
    print(f"written to {cfg.eval.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
