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
    max_position_embeddings: int = 4096  # recorded in config.json; a suite's context + generation must fit
    initializer_range: float = 0.02  # std of the normal init (Llama's default 0.02)
    attention_bias: bool = False  # biases on q/k/v/o (LlamaConfig.attention_bias; Qwen2 has them on q/k/v)


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
    """Multi-query associative recall: two-word keys and their values among filler, one key asked at the end."""

    length: int = 513  # prompt tokens, BOS to the asked key's second word; the answer is the next token
    pair_density: float = 0.5  # share of the 3-token slots holding a pair `a b v` (the rest: filler words)
    keys: int = 16  # distinct keys in a sample (the asked one appears once, the others repeat)
    key_words: int = 64  # pool size of each key word (`a` and `b` drawn from disjoint pools)
    values: int = 16  # pool size of the values: chance is 1 / values
    # Filler slots: three random words, or `x y x`, whose third word is the one two back: a
    # next-token target that needs only a previous-token head, the first half of the induction
    # circuit recall needs (in language, n-gram statistics grow that head; a Llama has no short
    # convolution to provide it, unlike Zoology's MQAR models). Scored targets are unchanged.
    filler: Literal["random", "skip_copy"] = "random"
    # Share of training rows that are copy rows (random words, then the same words again): the
    # canonical task on which induction heads form, here so the recall circuit does not wait on a
    # long plateau. Evaluation batches never hold one.
    copy_share: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.length < 16 or not 0 <= self.pair_density <= 1 or self.keys < 2 or self.values < 2:
            raise ValueError("length must be >= 16, pair_density in [0, 1], keys and values >= 2")
        if self.key_words < self.keys:
            raise ValueError("key_words must be >= keys: a sample's keys use distinct words")


@dataclass(frozen=True)
class RulerDataConfig:
    """RULER-format prompts (segbench's generator, the shipped tokenizer) at random lengths; `task: ruler`."""

    task: str = "niah_single_1"
    min_length: int = 256
    max_length: int = 4096
    seed: int = 1_000_000  # first RULER sample seed of training (suites evaluate with small seeds)
    copy_rows: int = 0  # copy rows added to every batch (segbench/train/ruler_data.py says why)
    copy_length: int = 128

    def __post_init__(self) -> None:
        from segbench.accuracy.ruler_config import TASK_SPECS

        if self.task not in TASK_SPECS:
            raise ValueError(f"ruler.task {self.task!r} is not a RULER task")
        if not 64 <= self.min_length <= self.max_length:
            raise ValueError("ruler lengths need 64 <= min_length <= max_length")
        if self.seed < 1000:
            raise ValueError("ruler.seed must be >= 1000: small seeds are the suites' evaluation samples")


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
    curve_every: int = 100  # learning curve: held-out accuracy under both inferences every this many steps (0: off)
    curve_n: int = 64  # held-out samples per curve point (seed eval.seed + 2)
    summary: str = "results/consistency/summary.json"


@dataclass(frozen=True)
class RunConfig:
    name: str
    attention: Literal["full", "segmented"]
    out: str  # checkpoint folder


@dataclass(frozen=True)
class TrainConfig:
    runs: tuple[RunConfig, ...]
    task: Literal["mqar", "ruler"] = "mqar"  # mqar: `data` (the consistency toy); ruler: `ruler` (a RULER preset)
    model: ModelConfig = field(default_factory=ModelConfig)
    segmented: SegmentedConfig = field(default_factory=SegmentedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ruler: RulerDataConfig = field(default_factory=RulerDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # A checkpoint folder to start from: every tensor whose name and shape match is copied, the rest
    # keep their fresh init (segbench_train.json lists both). Empty: train from scratch.
    init_from: str = ""

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("runs must list at least one run")
        if self.eval.seed == self.data.seed:
            raise ValueError("eval.seed must differ from data.seed: the table is on held-out samples")
        if self.segmented.segment % self.segmented.block:
            raise ValueError("segmented.segment must be a multiple of segmented.block")
        if self.task == "ruler":
            if not 1000 <= self.eval.seed < self.ruler.seed - 100_000:
                raise ValueError("task ruler: eval.seed must be in [1000, ruler.seed - 100000): held-out RULER seeds "
                                 "count up from eval.seed, training seeds from ruler.seed")
            return
        if self.data.length <= self.segmented.segment + self.segmented.tail + 4:
            raise ValueError("data.length must leave room for the pairs before the question's segment and its tail")
        if (self.data.length - 1) % self.segmented.segment:
            # The asked key's first word must be the last query of a segment (it picks the blocks the
            # question's segment retrieves) and its second word, the last prompt token, open the next.
            raise ValueError("data.length must be one more than a multiple of segmented.segment")


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
