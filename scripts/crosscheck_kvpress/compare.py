"""Any Python 3.10+ (stdlib only): the agreement table of kvpress.json and segbench.json, as Markdown."""

from __future__ import annotations

from common import CASES, KERNEL, SINKS, WINDOW, load_json


def main() -> None:
    kp, sb = load_json("kvpress.json"), load_json("segbench.json")
    print("- kvpress side: " + ", ".join(f"{k} {v}" for k, v in kp["versions"].items()))
    print("- segbench side: " + ", ".join(f"{k} {v}" for k, v in sb["versions"].items()))
    print(
        f"\nMatched: SnapKV window {WINDOW}, avg pooling kernel {KERNEL}, budget = kept - window; "
        f"StreamingLLM sinks {SINKS}, window = kept - sinks.\n"
    )
    print("| prompt | kept | layer | SnapKV kept-set agreement per KV head | StreamingLLM kept positions |")
    print("|---:|---:|---:|---|---|")
    for length, kept in CASES:
        a, b = kp[str(length)], sb[str(length)]
        for layer, (heads_a, heads_b) in enumerate(
            zip(a["snapkv"]["kept"], b["snapkv"]["kept"], strict=True)
        ):
            agree = [len(set(x) & set(y)) / len(x) for x, y in zip(heads_a, heads_b, strict=True)]
            same = ", ".join(f"h{h} {100 * r:.1f}%" for h, r in enumerate(agree))
            stream_a = a["streamingllm"]["kept"][layer]
            stream_b = b["streamingllm"]["cache"]["kept"]
            verdict = (
                "identical"
                if stream_a == stream_b
                else f"differ ({len(set(stream_a) ^ set(stream_b))} positions)"
            )
            print(f"| {length} | {kept} | {layer} | {same} | {verdict} |")
    print("\nFirst greedy tokens after prefill:\n")
    print(
        "| prompt | dense (kvpress) | dense (segbench full) | SnapKV kvpress | SnapKV segbench | StreamingLLM kvpress "
        "| StreamingLLM segbench cache | StreamingLLM segbench original |"
    )
    print("|---:|---|---|---|---|---|---|---|")
    for length, _ in CASES:
        a, b = kp[str(length)], sb[str(length)]
        row = [
            a["dense_greedy"],
            b["dense_greedy"],
            a["snapkv"]["greedy"],
            b["snapkv"]["greedy"],
            a["streamingllm"]["greedy"],
            b["streamingllm"]["cache"]["greedy"],
            b["streamingllm"]["original"]["greedy"],
        ]
        print(f"| {length} | " + " | ".join(" ".join(map(str, r)) for r in row) + " |")


if __name__ == "__main__":
    main()
