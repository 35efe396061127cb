#!/usr/bin/env bash
# Every check in this repository that needs a CUDA GPU, most important first, each under its own time limit:
# the configs' training memory at real scale, the CUDA tests (bf16 autocast on bf16 weights, the FSDP config,
# the probe's fused kernel), the probe's GPU overhead row, and whether the paper's 81-frame clips fit one GPU.
# Logs go to $OUT (default outputs/gpu-checks), one file per check; figures are recorded in benchmarks/README.md.
#   bash benchmarks/gpu_checks.sh
set -u
out=${OUT:-outputs/gpu-checks}
py=${PYTHON:-python3}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

check() {  # check NAME SECONDS COMMAND...: run it, keep its log, show its end
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "   exit $? after $((SECONDS - start)) s"
    grep -v "Loading\|it/s\]" "$out/$name.log" | tail -n 4
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, diffusers, peft, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'peft', peft.__version__, 'accelerate', accelerate.__version__)"
check memory-a14b 140 env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    $py benchmarks/train_memory.py --config configs/wan2.2-i2v-a14b.yaml --steps 1
if grep -q '"fits": false' "$out/memory-a14b.log"; then
    check memory-a14b-batch1 100 $py benchmarks/train_memory.py --config configs/wan2.2-i2v-a14b.yaml \
        --batch 1 --steps 1
fi
check memory-ti2v 50 $py benchmarks/train_memory.py --config configs/wan2.2-ti2v-5b.yaml --steps 2
check cuda-tests 200 $py -m pytest tests/test_cuda.py -o addopts= -p no:cacheprovider -rA -s
check probe-overhead 70 $py benchmarks/probe_overhead.py --device cuda --dtype bfloat16 --heads 40 --blocks 1 \
    --rows 45 --cols 80
check memory-a14b-paper 120 $py benchmarks/train_memory.py --config configs/wan2.2-i2v-a14b.yaml --batch 1 \
    --clip-length paper --steps 0
