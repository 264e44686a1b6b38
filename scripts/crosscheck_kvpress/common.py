"""Shared by both sides (no segbench, no kvpress import): paths, the matched parameters, row matching.

Kept positions are found by matching rows: a position is kept when its key row, bit for bit, is
in the compressed cache. Both sides gather rows of their dense prefill's keys, so this needs no
access to either implementation's internal indices.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


WORK = Path(os.environ.get("XCHECK_DIR", "/tmp/kvpress-xcheck"))
MODEL_DIR = WORK / "model"
# (prompt length, kept tokens per layer and KV head); kvpress keeps int(L * (1 - ratio)), so the
# ratios are chosen exact in binary.
CASES = [(2048, 512), (8192, 1024)]
WINDOW = 64  # SnapKV observation window (kvpress's default window_size)
KERNEL = 5  # avg pooling kernel (kvpress's SnapKVPress, and the SnapKV code default)
SINKS = 4  # StreamingLLM attention sinks (kvpress's n_sink default)
GREEDY = 8  # greedy tokens after prefill


def ids_path(length: int) -> Path:
    return WORK / f"ids_{length}.pt"


def kept_positions(dense_keys_BHLD: torch.Tensor, kept_keys_BHKD: torch.Tensor) -> list[list[int]]:
    """Per KV head (batch 0), the sorted positions whose key rows appear in the compressed keys."""
    out = []
    for h in range(dense_keys_BHLD.shape[1]):
        index = {row.numpy().tobytes(): i for i, row in enumerate(dense_keys_BHLD[0, h].contiguous())}
        hits = [index.get(row.numpy().tobytes(), -1) for row in kept_keys_BHKD[0, h].contiguous()]
        if -1 in hits:
            raise RuntimeError(f"head {h}: {hits.count(-1)} compressed rows are not rows of the dense keys")
        out.append(sorted(hits))
    return out


def save_json(name: str, data: dict) -> None:
    (WORK / name).write_text(json.dumps(data))


def load_json(name: str) -> dict:
    return json.loads((WORK / name).read_text())
