#!/usr/bin/env bash
# Every GPU check of the project in one run, for a machine with one CUDA GPU and PyTorch installed (no network
# needed). Results go to $OUT (default gpu-results/): the device, the JSON of each benchmark (pMF-B/16 at 256 px:
# the training step in bf16, inline du/dt first, then with the Triton tangent and the split form; one-step
# inference in bf16 compiled and in fp32; the Muon optimiser step) and the GPU-marked tests. The acceptance
# figures run first. Each command has its own time limit so that one hang does not eat the whole budget:
# under 14 minutes if every command ran to its limit, usually far less.
# Usage: OUT=gpu-results bash benchmarks/gpu_checks.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
run() {  # run NAME SECONDS CMD...: log to $OUT/NAME.log, never stop the script
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "   exit $? (log: $OUT/$name.log)"
    tail -n 3 "$OUT/$name.log"
}
python - <<'PY' | tee "$OUT/device.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
for mod in ("numpy", "PIL", "safetensors", "tqdm", "pytest", "sklearn", "mlxtend", "timm", "lpips"):
    try:
        importlib.import_module(mod)
        print("have", mod)
    except ImportError:
        print("MISSING", mod)
PY
# acceptance figures first (train ratio + MFU in bf16, inference speedup), then the rest
run train_b16_bf16_inline 120 python benchmarks/train_step.py --preset pMF-B/16 --batch 64 --device cuda \
    --precision bf16 --jvp inline --repeats 10 --json "$OUT/train_b16_bf16_inline.json"
run inference_b16_bf16_compile 150 python benchmarks/inference.py --preset pMF-B/16 --device cuda --precision bf16 \
    --compile --batch 256 --sweep 16,64,256 --json "$OUT/inference_b16_bf16_compile.json"
run inference_b16_fp32 90 python benchmarks/inference.py --preset pMF-B/16 --device cuda --batch 64 \
    --sweep 1,16,64,256 --json "$OUT/inference_b16_fp32.json"
run gpu_tests 150 python -m pytest -q -m gpu -p no:cacheprovider tests
run train_b16_bf16_inline_triton 90 python benchmarks/train_step.py --preset pMF-B/16 --batch 64 --device cuda \
    --precision bf16 --jvp inline --tangent-attention triton --repeats 10 --json "$OUT/train_b16_bf16_triton.json"
run train_b16_bf16_split 90 python benchmarks/train_step.py --preset pMF-B/16 --batch 64 --device cuda \
    --precision bf16 --jvp split --repeats 10 --json "$OUT/train_b16_bf16_split.json"
run optimizer_b16 45 python benchmarks/optimizer_step.py --preset pMF-B/16 --device cuda --repeats 10 \
    --json "$OUT/optimizer_b16.json"
# FSDP2 on one GPU: pMF-B/16 in bf16 for 4 steps on 64 random 256 px images (no network), then the DCP
# checkpoint read back in one process
python -c "import numpy as np; g = np.random.default_rng(0); np.savez('$OUT/rand256.npz', \
images=g.integers(0, 256, (64, 256, 256, 3), dtype=np.uint8), labels=g.integers(0, 10, 64))"
run fsdp_b16_bf16 120 bash -c "torchrun --standalone --nproc_per_node=1 -m pmf.cli train --recipe pMF-B/16 \
    --data $OUT/rand256.npz --no-perceptual --parallel fsdp --precision bf16 --steps 4 --batch-size 16 \
    --ckpt-every 4 --log-every 1 --out $OUT/fsdp_b16 --no-progress && cat $OUT/fsdp_b16/summary.json && \
    python -c 'from pmf.checkpoints.load import load_model; load_model(\"$OUT/fsdp_b16/checkpoints/step_00000004\"); print(\"read back\")'"
echo "results in $OUT"
