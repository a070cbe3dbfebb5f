#!/usr/bin/env bash
# The GPU checks of issue #6, in one call to a lent H100 / H200 (device tool: `run`, timeout ~540 s):
#   bash benchmarks/gpu_checks.sh
# 1. which of jaxlm's imports the machine lacks (it has jax, flax, optax, orbax, torch, transformers);
# 2. PyTorch parity on the GPU at jax.default_matmul_precision("highest") (tests/test_interop.py);
# 3. training tokens/s and MFU, bfloat16, sequence 1024, jaxlm vs transformers eager on the same GPU:
#    gpt2-small and gpt2-medium, without dropout (so jax.nn.dot_product_attention may pick cuDNN flash).
# Everything is written to $OUT (the device tool brings it back), or to ./gpu-results.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python - <<'PY'
import importlib
for name in ["jax", "flax", "optax", "orbax.checkpoint", "chex", "einops", "tokenizers", "safetensors", "yaml",
             "pydantic", "tqdm", "tensorboardX", "sklearn", "torch", "transformers", "pytest"]:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '')}")
    except ImportError as error:
        print(f"{name} MISSING ({error})")
import jax
print(jax.devices())
PY
} 2>&1 | tee "$out/environment.txt"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_interop.py -m "not slow" 2>&1 | tail -15 | tee "$out/parity.txt"
for size in small medium; do
  timeout 150 python benchmarks/train_throughput.py --model gpt2 --size "$size" --precision bfloat16 --dropout 0 \
    --batch 8 --seq 1024 --steps 10 --rounds 3 2>&1 | grep -v "^WARNING" | tee "$out/train-gpt2-$size.md"
done
