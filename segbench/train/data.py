"""Synthetic multi-query associative recall (MQAR) in token ids of the shipped tokenizer.

A sample is `<s>` then a run of 3-token slots, each either a pair `a b v` (a two-word key `a b`,
then its value `v`) or three filler words, and ends with the asked key `a b`; the answer is that
key's value, one token. Within a sample a key keeps its value and every key's `a` and `b` words are
unique, so a repeated key is an in-context recall (at `a`: predict `b`; at `b`: predict `v`): dense
training signal, and exactly the induction circuit small attention models are known to learn
(Zoology's MQAR; keys and values come from disjoint pools, so nothing can be guessed from filler).

Why two-word keys: segmented execution chooses a segment's retrieved blocks by the LAST query of
the PREVIOUS segment (the causal rule). The asked key's `a` is that last query (the prompt length
is one more than a multiple of the segment) and `b`, the last prompt token, opens the question's
segment: `a`'s induction query (looking for what followed an earlier `a`) can pick the block of
the asked pair, and `b` reads the value from it. The asked pair appears exactly once, before the
question's segment minus the tail, so under segmented inference only the long-range heads'
retrieved prefix can bring it back (the property the paper's claim is about). The answer is one
token, so the training forward (one forward per segment, like prefill) is exactly what inference
computes for the answer's logits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from segbench.accuracy.tokenizer import load_tokenizer
from segbench.train.config import DataConfig

POOL_SEED = 1234  # the vocabulary split is part of the task, not of a sample set: fixed
SLOT = 3  # a b v


@dataclass(frozen=True)
class Pools:
    first: np.ndarray  # key words `a`
    second: np.ndarray  # key words `b`
    values: np.ndarray
    filler: np.ndarray
    bos: int


@lru_cache(maxsize=8)
def pools(key_words: int, n_values: int) -> Pools:
    """Disjoint single-token word pools (' word' tokens of >= 3 letters), split by a fixed seed."""
    tok = load_tokenizer("tiny")
    vocab = tok.get_vocab()
    words = sorted(i for w, i in vocab.items() if re.fullmatch(r"\u0120[a-z]{3,}", w))
    perm = np.random.default_rng(POOL_SEED).permutation(np.array(words))
    used = 2 * key_words + n_values
    if used + 64 > len(perm):
        raise ValueError(f"pools of 2 x {key_words} key words and {n_values} values leave too little filler ({len(perm)} words)")
    return Pools(first=perm[:key_words], second=perm[key_words : 2 * key_words],
                 values=perm[2 * key_words : used], filler=perm[used:], bos=tok.bos_token_id)


def pair_limit(cfg: DataConfig, tail: int) -> int:
    """First position the asked pair may not reach: the question segment's start (the last prompt token) minus the tail."""
    return cfg.length - 1 - tail


def make_batch(cfg: DataConfig, n: int, rng: np.random.Generator, tail: int,
               train: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` prompts [n, length], their answers [n], and a recall mask [n, length].

    `recall[b, p]` marks tokens an earlier occurrence of the same key predicts (the `b` and `v` of
    a repeated key) and, with `filler: skip_copy`, the third word of each filler slot `x y x`. The
    asked key appears exactly once in the body, its whole pair before `pair_limit`; the others
    repeat as the slots draw them.

    With `train=True`, a share `cfg.copy_share` of the rows are copy rows instead: a span of random
    words (from every pool, of random length) repeated to the end, each repeated word a target, the
    answer the next word of the repeat. Never in evaluation batches.
    """
    p = pools(cfg.key_words, cfg.values)
    body = cfg.length - 3  # BOS, then the body, then the question `a b`
    n_slots, asked_slots = body // SLOT, (pair_limit(cfg, tail) - 1) // SLOT
    if asked_slots < 1:
        raise ValueError(f"data.length {cfg.length} leaves no slot before the question's segment and tail {tail}")
    ids = p.filler[rng.integers(0, len(p.filler), size=(n, cfg.length))]
    ids[:, 0] = p.bos
    recall = np.zeros((n, cfg.length), dtype=bool)
    answers = np.empty(n, dtype=np.int64)
    for row in range(n):
        first = p.first[rng.permutation(len(p.first))[: cfg.keys]]
        second = p.second[rng.permutation(len(p.second))[: cfg.keys]]
        value = p.values[rng.integers(0, len(p.values), size=cfg.keys)]
        is_pair = rng.random(n_slots) < cfg.pair_density
        asked_slot = rng.integers(asked_slots)
        is_pair[asked_slot] = True
        keys = rng.integers(1, cfg.keys, size=n_slots)  # key 0 is the asked one
        keys[asked_slot] = 0
        seen: set[int] = set()
        if cfg.filler == "skip_copy":  # filler slots `x y x`: the third word is the one two back
            at = 1 + SLOT * np.flatnonzero(~is_pair)
            ids[row, at + 2] = ids[row, at]
            recall[row, at + 2] = True
        for slot in np.flatnonzero(is_pair):
            key, at = int(keys[slot]), 1 + SLOT * int(slot)
            ids[row, at : at + SLOT] = first[key], second[key], value[key]
            recall[row, at + 1 : at + SLOT] = key in seen
            seen.add(key)
        ids[row, -2:] = first[0], second[0]
        answers[row] = value[0]
    if train and cfg.copy_share > 0:
        rows = np.flatnonzero(rng.random(n) < cfg.copy_share)
        words = np.concatenate([p.first, p.second, p.values, p.filler])
        copy_ids, copy_recall, copy_answers = copy_rows(len(rows), cfg.length, words, rng)
        ids[rows, 1:], recall[rows], answers[rows] = copy_ids, copy_recall, copy_answers
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(answers), torch.from_numpy(recall)


def copy_rows(n: int, length: int, words: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` copy rows: a span of random `words` repeated. Returns the body [n, length - 1] (BOS goes
    first), the target mask [n, length] (every repeated word) and the answer (the next word).

    The period is random per row (4 to half the length), so only content, the induction match,
    finds the word to copy, never a fixed offset.
    """
    body = np.empty((n, length - 1), dtype=np.int64)
    recall = np.zeros((n, length), dtype=bool)
    answers = np.empty(n, dtype=np.int64)
    for row in range(n):
        period = int(rng.integers(4, (length - 1) // 2 + 1))
        seq = np.resize(words[rng.integers(0, len(words), size=period)], length)
        body[row], answers[row] = seq[: length - 1], seq[length - 1]
        recall[row, 1 + period :] = True
    return body, recall, answers


def answer_text(token_id: int) -> str:
    return load_tokenizer("tiny").decode([token_id]).strip()
