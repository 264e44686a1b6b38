"""Training samples in RULER's own format, built by segbench's RULER generator (`accuracy.ruler`).

A training sample is a RULER prompt (`niah_single_1` by default: the needle sentence "One of the
special magic numbers for KEY is: NUMBER." in the repeated-sentence haystack, the question, the
answer prefix) in the shipped tokenizer, at a random length, followed by the answer's tokens
(`" " + NUMBER`) and EOS: the model learns to answer and to stop, so an accuracy cell decodes a
few tokens, not RULER's 128. The loss is on the answer and EOS tokens (plus, with
`optim.all_token_weight`, the prompt's next tokens).

`copy_rows` adds short copy rows to every batch (random words and digits, a span repeated): the
haystack's sentences are predictable from the previous token or two, so they never force the
induction heads that copying a 7-digit needle needs; copy rows do (as in the consistency toy).

Training draws RULER sample seeds from `seed` upwards (one seed per sample, index 0); the suites
evaluate with small seeds (ruler_cpu: 0), so the two sets never share a (seed, index) pair as long
as `seed` is far from them (the config refuses a seed below 1000).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import torch

from segbench.accuracy import ruler
from segbench.accuracy.tokenizer import load_tokenizer
from segbench.train import data
from segbench.train.config import RulerDataConfig


def sample(cfg: RulerDataConfig, length: int, sample_seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """ids [1, L] (prompt + answer + EOS), target mask [1, L] (the answer and EOS positions), answer text."""
    tok = load_tokenizer("tiny")
    s = ruler.generate(cfg.task, length, 1, tok, seed=sample_seed)[0]
    prompt = ruler.sample_token_ids(tok, s)
    answer = tok.encode(" " + s["outputs"][0], add_special_tokens=False) + [tok.eos_token_id]
    ids = torch.tensor([prompt + answer], dtype=torch.long)
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[0, len(prompt):] = True
    return ids, target, s["outputs"][0]


def draw_length(cfg: RulerDataConfig, rng: np.random.Generator) -> int:
    """Log-uniform in [min_length, max_length]: short prompts teach the lookup fast, long ones keep it at 4K."""
    return int(np.exp(rng.uniform(np.log(cfg.min_length), np.log(cfg.max_length))))


def batch(cfg: RulerDataConfig, n: int, rng: np.random.Generator) -> list[tuple[torch.Tensor, None, torch.Tensor]]:
    """`n` training samples, one (ids, None, target) per sample (lengths differ: no padding, one forward
    each), then, with `copy_rows`, one [copy_rows, copy_length] part of copy rows."""
    out = []
    for _ in range(n):
        ids, target, _ = sample(cfg, draw_length(cfg, rng), int(rng.integers(cfg.seed, cfg.seed + 2**31)))
        out.append((ids, None, target))
    if cfg.copy_rows:
        body, target, _ = data.copy_rows(cfg.copy_rows, cfg.copy_length, _copy_words(), rng)
        ids = np.concatenate([np.full((cfg.copy_rows, 1), load_tokenizer("tiny").bos_token_id), body], axis=1)
        out.append((torch.from_numpy(ids), None, torch.from_numpy(target)))
    return out


@lru_cache(maxsize=1)
def _copy_words() -> np.ndarray:
    """What copy rows are made of: the tokenizer's words, its digits and the lone space a number starts with."""
    tok = load_tokenizer("tiny")
    vocab = tok.get_vocab()
    words = [i for w, i in vocab.items() if re.fullmatch(r"\u0120[a-z]{3,}", w)]
    digits = [vocab[d] for d in "0123456789"] + [vocab["\u0120"]]
    return np.array(sorted(words) + digits * 50)  # digits weighted up: the answer is made of them


def held_out(cfg: RulerDataConfig, n: int, seed: int) -> list[tuple[torch.Tensor, None, torch.Tensor]]:
    """`n` samples at lengths spread evenly (log scale) over the training range, seeds from `seed`."""
    lengths = np.exp(np.linspace(np.log(cfg.min_length), np.log(cfg.max_length), n)).astype(int)
    return [(ids, None, target) for ids, target, _ in (sample(cfg, int(L), seed + i) for i, L in enumerate(lengths))]
