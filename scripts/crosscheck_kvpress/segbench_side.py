"""Run in segbench's venv. `save`: a tiny random-weight Llama (safetensors) and prompt ids in /tmp.
`run`: segbench's snapkv and streamingllm on them, kept positions and greedy tokens to JSON."""

from __future__ import annotations

import sys

import torch
import transformers
from common import CASES, GREEDY, KERNEL, MODEL_DIR, SINKS, WINDOW, WORK, ids_path, kept_positions, save_json
from segbench.methods.streamingllm import slot_of

import segbench
from segbench import hf
from segbench.method import make_method

transformers.utils.logging.disable_progress_bar()


def save() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    model = hf.build_model("tiny-llama", dtype="float32", device="cpu", seed=0)
    model.config.attn_implementation = "sdpa"  # what the other venv loads it with
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    for length, _ in CASES:
        ids = torch.randint(
            3, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length)
        )
        torch.save(ids, ids_path(length))
    print(f"saved {MODEL_DIR} and ids for {[c[0] for c in CASES]}")


def greedy(method, model, ids, snapshot) -> tuple[list[int], object]:
    """Greedy tokens after prefill, and `snapshot(gen)` taken right after prefill (decode mutates the state)."""
    with torch.inference_mode():
        gen = method.prefill(model, ids)
        first = snapshot(gen)
        tokens = []
        for _ in range(GREEDY):
            token = gen.logits.argmax(-1, keepdim=True)
            tokens.append(int(token))
            gen = method.decode(model, token, gen)
    return tokens, first


def run() -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    hf.register_default_attention()
    out = {
        "versions": {
            "segbench": segbench.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
    }
    for length, kept in CASES:
        ids = torch.load(ids_path(length))
        full = make_method("full", {})
        full.setup(model, device="cpu", dtype="float32")
        keys = lambda gen: [k.clone() for k in hf.cache_tensors(gen.state)[0::2]]  # noqa: E731
        dense_tokens, dense_keys = greedy(full, model, ids, keys)

        snap = make_method(
            "snapkv", {"budget": kept - WINDOW, "window": WINDOW, "pooling": "avg", "kernel": KERNEL}
        )
        snap.setup(model, device="cpu", dtype="float32")
        snap_tokens, snap_keys = greedy(snap, model, ids, keys)
        snap_kept = [kept_positions(d, k) for d, k in zip(dense_keys, snap_keys, strict=True)]

        stream = {}
        for positions in ("cache", "original"):
            m = make_method("streamingllm", {"sinks": SINKS, "window": kept - SINKS, "positions": positions})
            m.setup(model, device="cpu", dtype="float32")
            tokens, (kept_now, ring_k0) = greedy(
                m,
                model,
                ids,
                lambda gen, m=m: (m.kept_positions(gen).tolist(), gen.state.layers[0].k.clone()),
            )
            # The ring really holds them: layer-0 keys depend on token and position only, so each
            # kept position's slot holds (up to rounding) the dense prefill's layer-0 key there.
            slots = slot_of(torch.tensor(kept_now), SINKS, kept - SINKS)
            torch.testing.assert_close(ring_k0[:, :, slots], dense_keys[0][:, :, kept_now])
            stream[positions] = {"kept": kept_now, "greedy": tokens}
        out[str(length)] = {
            "dense_greedy": dense_tokens,
            "snapkv": {"kept": snap_kept, "greedy": snap_tokens},
            "streamingllm": stream,
        }
        print(f"segbench L={length}: done")
    save_json("segbench.json", out)


if __name__ == "__main__":
    {"save": save, "run": run}[sys.argv[1]]()
