#!/usr/bin/env bash
# GPU checks, prepared to run in one go on a borrowed accelerator machine (a few minutes):
#
#   bash scripts/device_check.sh OUTDIR
#
# 1. sharding (multi_gpu_check.py): nccl with one process per visible GPU, and gloo with 2 processes
#    (on a 1-GPU machine both share the GPU: a correctness check on real GPU tensors, not a speed-up);
# 2. with SWEEP=1, the evaluation sweep (eval_sweep.py --device) at k = 10 only; with FULL_SWEEP=1 the
#    README's four sweeps (up to 8 rollout processes each sharing the GPU, JOBS=N), packed in sweeps.tgz;
# 3. sampler latency on the GPU (bench_samplers.py --device cuda) with the shipped policy and adapter;
# 4. lockstep rollouts of the 50 evaluation episodes with DDIM-50 and PCM on the GPU.
#
# The machine needs python3 with a CUDA torch. Offline machines get the other packages from wheels in
# .devwheels/ (made here with: pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 -d .devwheels diffusers peft zarr numcodecs donfig google-crc32c
# gymnasium farama-notifications pymunk cffi pygame shapely), installed into a scratch folder.
# DEVICE=cpu QUICK=1 runs the same commands on a CPU, small, to check the script itself.
set -euo pipefail
out=${1:-outputs/device_check}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
if ! $py -c "import diffusers, peft, zarr, pymunk, gymnasium, pygame, shapely" 2>/dev/null && [ -d .devwheels ]; then
    $py -m pip install -q --no-deps --no-index --target /tmp/pcm_site .devwheels/*.whl
    export PYTHONPATH=/tmp/pcm_site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} SDL_VIDEODRIVER=dummy
if [ -n "${QUICK:-}" ]; then
    bench=(--conds 1 --repeats 1 --windows 50 --tols 0.1 --safeguards none --curve 1,50 --curve-repeats 2)
    roll=(--episodes 2 --max-steps 16) repeats=1
else
    bench=(--conds 4 --repeats 3 --curve-threads 1) roll=(--episodes 50) repeats=5
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia_smi.csv" 2>&1 || true
$py -c "import torch, diffusers, peft, zarr, pymunk, gymnasium; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'diffusers', diffusers.__version__, 'peft', peft.__version__)"

echo "== 1. sharding"
if [ -n "${NO_SHARD:-}" ]; then
    echo "skipped (NO_SHARD)"
elif [ "$device" = cpu ]; then
    $py -m torch.distributed.run --standalone --nproc_per_node=2 scripts/multi_gpu_check.py --cpu --size small \
        --repeats "$repeats" --out "$out/multi_gpu_gloo2.json"
else
    n=$($py -c "import torch; print(torch.cuda.device_count())")
    $py -m torch.distributed.run --standalone --nproc_per_node="$n" scripts/multi_gpu_check.py --size small \
        --repeats "$repeats" --out "$out/multi_gpu_nccl.json"
    $py -m torch.distributed.run --standalone --nproc_per_node=2 scripts/multi_gpu_check.py --size small \
        --backend gloo --repeats "$repeats" --out "$out/multi_gpu_gloo2.json"
fi

if [ -n "${FULL_SWEEP:-}" ]; then  # the README's four sweeps side by side, packed into one file
    echo "== 2. evaluation sweeps"
    jobs=${JOBS:-8} sw=/tmp/pcm_sweeps ks=1,2,3,4,5,6,8,10,12,15,20
    mkdir -p "$sw"
    $py scripts/eval_sweep.py --device "$device" --jobs "$jobs" --samplers ddim,ddim-k,picard,pcm --score-ks "$ks" \
        --out "$sw/sweep" "${roll[@]}" >"$sw/sweep.log" 2>&1 &
    $py scripts/eval_sweep.py --device "$device" --jobs $(((jobs + 1) / 2)) --samplers picard --init prior \
        --score-ks "$ks" --out "$sw/sweep_prior" "${roll[@]}" >"$sw/sweep_prior.log" 2>&1 &
    $py scripts/eval_sweep.py --device "$device" --samplers newton --distance-conditions 100 \
        --out "$sw/sweep_newton" "${roll[@]}" >"$sw/sweep_newton.log" 2>&1 &
    $py scripts/eval_sweep.py --device "$device" --jobs $(((jobs + 1) / 2)) --samplers taa --score-ks "$ks" \
        --out "$sw/sweep_taa" "${roll[@]}" >"$sw/sweep_taa.log" 2>&1 &
    wait
    for f in sweep sweep_prior sweep_newton sweep_taa; do grep -v -i warning "$sw/$f.log" | tail -n 40; done
    tar czf "$out/sweeps.tgz" -C "$sw" sweep sweep_prior sweep_newton sweep_taa \
        sweep.log sweep_prior.log sweep_newton.log sweep_taa.log
elif [ -n "${SWEEP:-}" ]; then  # the evaluation sweep's GPU path at one k (its files stay in /tmp)
    echo "== 2. sweep at k = 10"
    time $py scripts/eval_sweep.py --device "$device" --samplers ddim,picard,pcm --ks 1,10 --score-ks 10 \
        "${roll[@]}" --out /tmp/pcm_sweep_check | tail -n 12
fi

echo "== 3. sampler latency"
$py scripts/bench_samplers.py --device "$device" "${bench[@]}" --out "$out/bench_samplers.json"

echo "== 4. rollouts"
for s in ddim pcm; do
    $py scripts/rollout.py --device "$device" --sampler "$s" --seed 100000 "${roll[@]}" --json "$out/rollout_$s.json" \
        | tail -n 3
done


echo "== 5. image case: a random UNet with SD v1.4's real config (860M parameters), fp16, batch 1, windows 1..T=30"
$py scripts/vision/bench_window.py --sd14 --device "$device" --dtype float16 --windows 1,2,4,8,16,30 --repeats 5 \
    --out "$out/vision_sd14_window.json" | tail -n 12
