"""The training recipe: typed, frozen, validated by `segbench.typed.from_dict` (unknown keys refused)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from segbench.errors import UserError
from segbench.typed import from_dict


@dataclass(frozen=True)
class ModelConfig:
    """A tiny Llama. Embeddings are tied so that a 4096-word vocabulary does not dominate the checkpoint."""

    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class SegmentedConfig:
    """The segmented adapter's parameters; the same values drive segmented training and segmented inference."""

    segment: int = 128
    tail: int = 32
    topk: int = 2
    block: int = 16
    long_range_layers: tuple[int, ...] = (1,)
    long_range_heads: Literal["all"] | tuple[int, ...] = "all"
    long_range_tail: bool = True

    def method_params(self) -> dict:
        """Parameters for `make_method("segmented", ...)`; the torch kernel, so training and eval share code."""
        heads = self.long_range_heads if self.long_range_heads == "all" else list(self.long_range_heads)
        return {"segment": self.segment, "tail": self.tail, "topk": self.topk, "block": self.block,
                "long_range_layers": list(self.long_range_layers), "long_range_heads": heads, "long_range_tail": self.long_range_tail, "kernel": "torch"}


@dataclass(frozen=True)
class DataConfig:
    """Associative recall in a haystack of key-value pairs and filler, a query for one key at the end."""

    length: int = 512  # prompt tokens, BOS to the queried key; the answer is the next token
    pair_density: float = 0.5  # share of the 2-token slots holding a pair (the rest: filler words)
    keys: int = 64  # vocabulary pools (single-token words, disjoint)
    values: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.length < 16 or not 0 <= self.pair_density <= 1 or self.keys < 2 or self.values < 2:
            raise ValueError("length must be >= 16, pair_density in [0, 1], keys and values >= 2")


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    all_token_weight: float = 0.0  # next-token loss on every prompt position (costly: the 4096-way head everywhere)
    recall_weight: float = 1.0  # loss on values whose key was seen before in the sample (data.make_batch's recall mask)
    max_minutes: float = 0.0  # > 0: stop early at this wall time (the step count reached is recorded)
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    n: int = 200  # held-out samples per cell of the 2x2 table
    seed: int = 1_000_003  # data seed of the held-out set; must differ from data.seed
    fixed_n: int = 16  # samples whose score is stored with the checkpoint (tests reload and compare)
    summary: str = "results/consistency/summary.json"


@dataclass(frozen=True)
class RunConfig:
    name: str
    attention: Literal["full", "segmented"]
    out: str  # checkpoint folder


@dataclass(frozen=True)
class TrainConfig:
    runs: tuple[RunConfig, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    segmented: SegmentedConfig = field(default_factory=SegmentedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("runs must list at least one run")
        if self.eval.seed == self.data.seed:
            raise ValueError("eval.seed must differ from data.seed: the table is on held-out samples")
        if self.segmented.segment % self.segmented.block:
            raise ValueError("segmented.segment must be a multiple of segmented.block")
        if self.data.length <= self.segmented.segment + self.segmented.tail + 4:
            raise ValueError("data.length must leave room for the pairs before the question's segment and its tail")


def load_config(path: str | Path) -> TrainConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise UserError(f"cannot read training config {str(p)!r}: {e.strerror}") from None
    return from_dict(TrainConfig, data, p.name)


def config_dict(cfg) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    import dataclasses
    import json

    return json.loads(json.dumps(dataclasses.asdict(cfg)))
