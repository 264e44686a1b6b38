"""The 2x2 consistency table: each trained checkpoint under full and under segmented inference.

Inference goes through the real method adapters (`make_method("full")`, `make_method("segmented",
params)`) and `worker.run_once` (prefill, then greedy decoding, as accuracy cells run), on held-out
samples (`eval.seed`, never the training seed). A sample scores with RULER's `string_match_all`
against the answer word; intervals are Wilson 95% (scores are 0/1).
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from segbench import hf, store
from segbench.accuracy.scoring import string_match_all_per_sample
from segbench.accuracy.stats import wilson_interval
from segbench.accuracy.tokenizer import load_tokenizer
from segbench.method import make_method
from segbench.train import data
from segbench.train.config import TrainConfig, config_dict
from segbench.train.model import read_record

INFER = {"full": "full_infer", "segmented": "seg_infer"}
TRAINED = {"full": "full_trained", "segmented": "seg_trained"}


def load_trained(path: str | Path) -> torch.nn.Module:
    """A saved checkpoint, in inference mode on the CPU, float32 (as trained)."""
    hf.register_default_attention()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, local_files_only=True, attn_implementation="segbench_sdpa")
    model.eval()
    model.requires_grad_(False)
    return model


def inference_method(model: torch.nn.Module, attention: str, cfg: TrainConfig):
    """The real adapter for `attention` inference (the recipe's segmented settings), set up on `model`."""
    method = make_method("full", {}) if attention == "full" else make_method("segmented", cfg.segmented.method_params())
    method.setup(model, device="cpu", dtype="float32")
    return method


def predict(model: torch.nn.Module, attention: str, cfg: TrainConfig, n: int, seed: int) -> tuple[list[float], list[list[int]]]:
    """Per-sample scores (0/1) and generated ids of `n` held-out samples under `attention` inference."""
    from segbench.worker import run_once  # the worker's imports are heavy; only when evaluating

    method = inference_method(model, attention, cfg)
    tok = load_tokenizer("tiny")
    ids, answers, _ = data.make_batch(cfg.data, n, np.random.default_rng(seed), cfg.segmented.tail)
    preds, refs, out_ids = [], [], []
    for row in range(n):
        out = run_once(method, model, ids[row : row + 1], decode_tokens=0, device="cpu", eos_id=tok.eos_token_id)
        out_ids.append(out["output_token_ids"])
        preds.append(tok.decode(out["output_token_ids"]))
        refs.append([data.answer_text(int(answers[row]))])
    return string_match_all_per_sample(preds, refs), out_ids


def cell(scores: list[float]) -> dict:
    lo, hi = wilson_interval(sum(scores), len(scores))
    return {"score": 100 * float(np.mean(scores)), "ci95": [100 * lo, 100 * hi], "n": len(scores)}


RULER_FIXED_LENGTH = 1024  # the recorded RULER score's prompt length: short enough for a test, past every local window
RULER_FIXED_SEED_OFFSET = 50_000  # RULER sample seeds of the recorded score: eval.seed + this + i (the curve uses eval.seed + i)


def predict_ruler(model: torch.nn.Module, attention: str, cfg: TrainConfig, n: int, seed: int,
                  length: int = RULER_FIXED_LENGTH) -> tuple[list[float], list[list[int]]]:
    """Per-sample RULER scores (0/1, the task's official metric) and generated ids, greedy until EOS."""
    from segbench.accuracy import ruler
    from segbench.accuracy.scoring import ruler_sample_score
    from segbench.worker import run_once

    method = inference_method(model, attention, cfg)
    tok = load_tokenizer("tiny")
    scores, out_ids = [], []
    for i in range(n):
        s = ruler.generate(cfg.ruler.task, length, 1, tok, seed=seed + i)[0]
        ids = torch.tensor([ruler.sample_token_ids(tok, s)])
        out = run_once(method, model, ids, decode_tokens=24, device="cpu", eos_id=tok.eos_token_id)
        out_ids.append(out["output_token_ids"])
        # Scored as an accuracy cell scores it.
        scores.append(ruler_sample_score(s["metric"], tok.decode(out["output_token_ids"]), s["outputs"]))
    return scores, out_ids


def fixed_sample_scores(model: torch.nn.Module, cfg: TrainConfig) -> dict:
    """The score recorded with a checkpoint, both inferences: `eval.fixed_n` samples at seed
    eval.seed + 1 (MQAR), or RULER samples of RULER_FIXED_LENGTH tokens at seeds eval.seed + 50000 + i."""
    ruler_task = cfg.task == "ruler"
    seed = cfg.eval.seed + (RULER_FIXED_SEED_OFFSET if ruler_task else 1)
    result: dict = {"seed": seed, "n": cfg.eval.fixed_n}
    if ruler_task:
        result["length"] = RULER_FIXED_LENGTH
    for attention in INFER:
        scores, ids = (predict_ruler if ruler_task else predict)(model, attention, cfg, cfg.eval.fixed_n, seed)
        result[attention] = {"score": 100 * float(np.mean(scores)), "output_token_ids": ids}
    return result


def read_curve(log: Path) -> list[dict]:
    """The learning-curve points a run logged (`{"curve": {...}}` lines of its train_log.jsonl)."""
    import json

    if not log.is_file():
        return []
    points = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if "curve" in entry:
            points.append(entry["curve"])
    return points


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def summarize(cfg: TrainConfig, config_path: str) -> dict:
    """Fill the 2x2 table from the runs' checkpoints and write it to `eval.summary`."""
    by_mode = {run.attention: run for run in cfg.runs}
    if set(by_mode) != set(TRAINED):
        raise ValueError("the 2x2 table needs one run with attention: full and one with attention: segmented")
    start = time.perf_counter()
    # Guessing uniformly among the value words scores 100 / values: a cell near it learned no retrieval.
    table: dict = {"n": cfg.eval.n, "chance": 100 / cfg.data.values}
    runs: dict = {}
    for mode, run in by_mode.items():
        model = load_trained(run.out)
        table[TRAINED[mode]] = {INFER[a]: cell(predict(model, a, cfg, cfg.eval.n, cfg.eval.seed)[0]) for a in INFER}
        record = read_record(run.out)
        runs[TRAINED[mode]] = {"name": run.name, "checkpoint": run.out, "steps": record["steps"],
                               "train_wall_s": record["train_wall_s"], "final_answer_loss": record["final_answer_loss"],
                               "segmented_rule": record.get("segmented_rule"),
                               "curve": record.get("curve") or read_curve(Path(run.out) / "train_log.jsonl")}
    # The learning curves at the top level too: they are half of the result (how fast, how stable).
    table["curves"] = {mode: run["curve"] for mode, run in runs.items()}
    table["provenance"] = {
        "config_file": config_path, "config": config_dict(cfg), "runs": runs, "eval_seed": cfg.eval.seed,
        "train_data_seed": cfg.data.seed, "eval_wall_s": round(time.perf_counter() - start, 1),
        "metric": "string_match_all (RULER), %, Wilson 95% CI; one-token answers, greedy",
        "git_sha": git_sha(), "host": socket.gethostname(), "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, **hf.versions()},
    }
    out = Path(cfg.eval.summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(out, table)
    return table
