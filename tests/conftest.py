import os

# Tests never reach a hub: everything is generated or shipped.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton reads TRITON_INTERPRET when it is first imported, and any test module (or an adapter a
# test builds) may be the first to import it: without a GPU every kernel runs in the interpreter,
# decided here, once, before collection. With CUDA the GPU tests run the compiled kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TINY_PRESETS = ("tiny-llama", "tiny-qwen2", "tiny-mistral")


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # 2-core CI: keep torch from oversubscribing when the runner's cell processes also run.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
