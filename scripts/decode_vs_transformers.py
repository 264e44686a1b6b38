"""Decode latency of segbench's adapters against a plain transformers greedy loop, same model, same process.

    python scripts/decode_vs_transformers.py [--context 16384] [--steps 64] [--model tiny-llama]

Each method is prefilled once at `--context`, then decode steps are *interleaved* (one step of
every contender in turn, `--steps` rounds), so a busy machine slows all of them alike instead of
whichever ran during a burst. The reference is what a user of transformers would write: a
DynamicCache, `model(input_ids=token, past_key_values=cache)` per token. Prints one line per
contender with its p50/p90 and its p50 relative to the reference. The allocator is left at
glibc's defaults, as the harness's timing passes leave it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segbench import hf
from segbench.method import make_method


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--methods", default="full,streamingllm,segmented", help="comma-separated, defaults params")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = hf.build_model(args.model, dtype="float32", device="cpu")
    ids = torch.randint(3, model.config.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(0))

    import transformers

    times: dict[str, list[float]] = {"transformers": []}
    with torch.inference_mode():
        # The reference: transformers' own sdpa attention and DynamicCache.
        model.set_attn_implementation("sdpa")
        cache = transformers.DynamicCache(config=model.config)
        out = model(input_ids=ids, **{hf.cache_kwarg(model): cache}, use_cache=True, logits_to_keep=1)
        ref_token = out.logits[:, -1].argmax(-1, keepdim=True)
        states = {}
        for name in args.methods.split(","):
            method = make_method(name, {})
            method.setup(model, device="cpu", dtype="float32")
            gen = method.prefill(model, ids)
            states[name] = [method, gen, gen.logits.argmax(-1, keepdim=True)]
            times[name] = []
        for _ in range(args.steps):
            model.set_attn_implementation("sdpa")
            t0 = time.perf_counter()
            out = model(input_ids=ref_token, **{hf.cache_kwarg(model): cache}, use_cache=True, logits_to_keep=1)
            ref_token = out.logits[:, -1].argmax(-1, keepdim=True)
            times["transformers"].append((time.perf_counter() - t0) * 1000)
            for name, state in states.items():
                method, gen, token = state
                method.setup(model, device="cpu", dtype="float32")  # each adapter's attention function
                t0 = time.perf_counter()
                gen = method.decode(model, token, gen)
                token = gen.logits.argmax(-1, keepdim=True)
                times[name].append((time.perf_counter() - t0) * 1000)
                state[1], state[2] = gen, token
    ref = statistics.median(times["transformers"])
    print(f"{args.model}, context {args.context}, {args.steps} interleaved steps, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    for name, ms in times.items():
        p50 = statistics.median(ms)
        print(f"{name:>14}: decode p50 {p50:7.2f} ms  p90 {_p(ms, 90):7.2f} ms  p50/transformers {p50 / ref:5.2f}")


if __name__ == "__main__":
    main()
