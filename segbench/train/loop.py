"""One training run: synthetic batches, AdamW with warmup + cosine, a rich progress bar, a jsonl log,
and a learning curve: held-out answer accuracy under both inference modes every `eval.curve_every` steps."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segbench.train import data, forward, ruler_data
from segbench.train.config import RunConfig, TrainConfig


@dataclass
class RunResult:
    model: torch.nn.Module
    steps: int
    wall_s: float
    first_loss: float
    last_loss: float  # mean answer loss over the last 10% of steps
    curve: list[dict]  # {"step", "t", "loss", "answer_loss", "recall_acc", "full_infer", "seg_infer"} every curve_every steps
    init: dict | None = None  # what init_from copied (model.init_from_checkpoint)


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_run(cfg: TrainConfig, run: RunConfig, log_path: Path | None = None, progress: bool = True) -> RunResult:
    from segbench.train.model import init_from_checkpoint, new_model

    o, seg = cfg.optim, cfg.segmented
    model = new_model(cfg.model, o.seed)
    init = init_from_checkpoint(model, cfg.init_from) if cfg.init_from else None
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=o.lr, betas=(0.9, 0.95))
    # Both modes see the same batches: the data seed, not the attention mode, decides them.
    rng = np.random.default_rng(cfg.data.seed)
    seg_params = seg.method_params()
    log = log_path.open("w") if log_path else None
    answer_losses: list[float] = []
    curve: list[dict] = []
    recent: list[dict] = []
    held_out = _held_out(cfg)
    start = time.perf_counter()
    bar = _progress(progress, run.name, o.steps)
    step = 0
    try:
        for step in range(o.steps):
            if o.max_minutes and time.perf_counter() - start > 60 * o.max_minutes:
                break
            if cfg.eval.curve_every and step % cfg.eval.curve_every == 0:
                curve.append(_curve_point(model, step, time.perf_counter() - start, recent, held_out, seg_params))
                recent = []
                _log_curve(log, curve[-1])
            for group in opt.param_groups:
                group["lr"] = lr_at(step, o.steps, o.lr, o.warmup)
            opt.zero_grad(set_to_none=True)
            parts = _batch(cfg, rng)  # one part (MQAR: a [B, L] batch) or one per sample (RULER: lengths differ)
            total, metrics = torch.zeros(()), {}
            for ids, answers, recall in parts:
                part, part_metrics = forward.loss(model, run.attention, ids, answers, seg_params, o.all_token_weight,
                                                  recall, o.recall_weight)
                (part / len(parts)).backward()
                total = total + part.detach() / len(parts)
                for key, value in part_metrics.items():
                    metrics[key] = metrics.get(key, 0.0) + value / len(parts)
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            answer_losses.append(metrics.get("answer_loss", metrics.get("recall_loss", float("nan"))))
            recent.append({"loss": float(total), **metrics})
            if log:
                log.write(json.dumps({"step": step, "loss": float(total), **metrics,
                                      "lr": opt.param_groups[0]["lr"], "t": round(time.perf_counter() - start, 2)}) + "\n")
                log.flush()
            if bar:
                bar[0].update(bar[1], advance=1, description=f"{run.name} loss {float(total):.3f}")
        else:
            step = o.steps
        curve.append(_curve_point(model, len(answer_losses), time.perf_counter() - start, recent, held_out, seg_params))
        _log_curve(log, curve[-1])
    finally:
        if bar:
            bar[0].stop()
        if log:
            log.close()
    tail = max(1, len(answer_losses) // 10)
    model.eval()
    return RunResult(model=model, steps=len(answer_losses), wall_s=time.perf_counter() - start,
                     first_loss=answer_losses[0] if answer_losses else float("nan"),
                     last_loss=float(np.mean(answer_losses[-tail:])) if answer_losses else float("nan"), curve=curve,
                     init=init)


def _log_curve(log, point: dict) -> None:
    if log:
        log.write(json.dumps({"curve": point}) + "\n")


def _batch(cfg: TrainConfig, rng: np.random.Generator) -> list[tuple]:
    if cfg.task == "ruler":
        return ruler_data.batch(cfg.ruler, cfg.optim.batch_size, rng)
    return [data.make_batch(cfg.data, cfg.optim.batch_size, rng, cfg.segmented.tail, train=True)]


def _held_out(cfg: TrainConfig) -> list[tuple]:
    """The learning curve's samples, never trained on: MQAR at data seed eval.seed + 2; RULER at
    sample seeds eval.seed + i (training draws its seeds from ruler.seed upwards)."""
    if cfg.task == "ruler":
        return ruler_data.held_out(cfg.ruler, cfg.eval.curve_n, cfg.eval.seed)
    return [data.make_batch(cfg.data, cfg.eval.curve_n, np.random.default_rng(cfg.eval.seed + 2), cfg.segmented.tail)]


def _correct(model: torch.nn.Module, attention: str, ids: torch.Tensor, answers, target, seg_params: dict) -> torch.Tensor:
    """Per sample: the one-token answer is the argmax (MQAR), or every target token is (RULER, teacher-forced,
    which is what greedy decoding produces when each step is right)."""
    h = forward.hidden_states(model, attention, ids, seg_params)
    head = model.get_output_embeddings()
    if answers is not None:
        return head(h[:, -1]).argmax(-1) == answers
    rows, pos = target.nonzero(as_tuple=True)
    hit = head(h[rows, pos - 1]).argmax(-1) == ids[rows, pos]
    return torch.stack([hit[rows == r].all() for r in range(ids.shape[0])])


def _curve_point(model: torch.nn.Module, step: int, t: float, recent: list[dict], held_out, seg_params: dict) -> dict:
    """Training metrics averaged since the last point, and held-out answer accuracy (%) under both
    inference modes, computed by the training forwards (which equal prefill for the answer's logits)."""
    point: dict = {"step": step, "t": round(t, 1)}
    for key in ("loss", "answer_loss", "answer_acc", "recall_loss", "recall_acc"):
        vals = [r[key] for r in recent if key in r]
        if vals:
            point["train_" + key] = round(float(np.mean(vals)), 4)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for attention, name in (("full", "full_infer"), ("segmented", "seg_infer")):
            hits = torch.cat([_correct(model, attention, ids, answers, target, seg_params) for ids, answers, target in held_out])
            point[name] = round(100 * float(hits.float().mean()), 2)
    model.train(was_training)
    return point


def _progress(enabled: bool, name: str, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar.start()
    return bar, bar.add_task(name, total=total)
