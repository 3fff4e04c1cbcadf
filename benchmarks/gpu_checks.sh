#!/usr/bin/env bash
# Every GPU check of the project in one run, for a machine with one CUDA GPU and PyTorch installed (no network
# needed). Results go to $OUT (default gpu-results/): the device, the GPU-marked tests, and the JSON of each
# benchmark (pMF-B/16 at 256 px: training step in bf16 for each du/dt form, one-step inference in fp32 and
# bf16, the Muon optimiser step). Each command has its own time limit so that one hang does not eat the
# whole budget; about 10 minutes.
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
run gpu_tests 240 python -m pytest -q -m gpu -p no:cacheprovider tests
for jvp in inline split fused; do
    run "train_b16_bf16_$jvp" 120 python benchmarks/train_step.py --preset pMF-B/16 --batch 64 --device cuda \
        --precision bf16 --jvp "$jvp" --repeats 10 --json "$OUT/train_b16_bf16_$jvp.json"
done
run inference_b16_fp32 90 python benchmarks/inference.py --preset pMF-B/16 --device cuda --batch 64 \
    --sweep 1,16,64,256 --json "$OUT/inference_b16_fp32.json"
run inference_b16_bf16 120 python benchmarks/inference.py --preset pMF-B/16 --device cuda --precision bf16 \
    --batch 256 --sweep 1,16,64,256 --json "$OUT/inference_b16_bf16.json"
run optimizer_b16 60 python benchmarks/optimizer_step.py --preset pMF-B/16 --device cuda --repeats 10 \
    --json "$OUT/optimizer_b16.json"
echo "results in $OUT"
