"""Run in the kvpress venv: kvpress's SnapKVPress and StreamingLLMPress on the saved model and ids,
kept positions (row matching against the dense prefill's keys) and greedy tokens to JSON."""

from __future__ import annotations

from importlib.metadata import version

import torch
import transformers
from common import CASES, GREEDY, KERNEL, MODEL_DIR, SINKS, WINDOW, ids_path, kept_positions, save_json
from kvpress import SnapKVPress, StreamingLLMPress

transformers.utils.logging.disable_progress_bar()


def prefill_and_greedy(model, ids, press):
    """Prefill (compressed inside each layer's forward when a press is given), then greedy tokens
    at the true positions, as kvpress's own pipeline decodes. Returns (tokens, per-layer keys)."""
    cache = transformers.DynamicCache()
    with torch.inference_mode():
        if press is None:
            out = model(input_ids=ids, past_key_values=cache)
        else:
            with press(model):
                out = model(input_ids=ids, past_key_values=cache)
        keys = [layer.keys.clone() for layer in cache.layers]
        tokens, logits = [], out.logits[:, -1]
        for i in range(GREEDY):
            token = logits.argmax(-1, keepdim=True)
            tokens.append(int(token))
            position = torch.tensor([[ids.shape[1] + i]])
            logits = model(input_ids=token, past_key_values=cache, position_ids=position).logits[:, -1]
    return tokens, keys


def main() -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    out = {
        "versions": {
            "kvpress": version("kvpress"),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
    }
    for length, kept in CASES:
        ids = torch.load(ids_path(length))
        ratio = 1 - kept / length
        dense_tokens, dense_keys = prefill_and_greedy(model, ids, None)
        snap_tokens, snap_keys = prefill_and_greedy(
            model, ids, SnapKVPress(compression_ratio=ratio, window_size=WINDOW, kernel_size=KERNEL)
        )
        stream_tokens, stream_keys = prefill_and_greedy(
            model, ids, StreamingLLMPress(compression_ratio=ratio, n_sink=SINKS)
        )
        out[str(length)] = {
            "dense_greedy": dense_tokens,
            "snapkv": {
                "kept": [kept_positions(d, k) for d, k in zip(dense_keys, snap_keys, strict=True)],
                "greedy": snap_tokens,
            },
            # StreamingLLMPress keeps the same positions in every head: report head 0's.
            "streamingllm": {
                "kept": [kept_positions(d, k)[0] for d, k in zip(dense_keys, stream_keys, strict=True)],
                "greedy": stream_tokens,
            },
        }
        print(f"kvpress L={length}: done")
    save_json("kvpress.json", out)


if __name__ == "__main__":
    main()
