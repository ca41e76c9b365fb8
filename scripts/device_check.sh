#!/usr/bin/env bash
# GPU checks, prepared to run in one go on a borrowed accelerator machine (at most 8 minutes; each step has its
# own time limit):
#
#   bash scripts/device_check.sh OUTDIR
#
# 1. side by side, eager and with CUDA graphs (scripts/bench_graphs.py, sampling.CudaGraphs): sequential DDIM-T vs
#    Picard / Picard + TAA / PCM for the shipped PushT policy (T = 50, tol 0.1), a 63.6M lerobot-size 1-D UNet
#    (random, fixed iteration counts) and a random UNet with SD v1.4's config at 4x64x64 latents in fp16 (CFG,
#    T = 30, window 30); ms per chunk, x DDIM-T, and the max |graphs - eager| difference (limit 270 s);
# 2. lockstep rollouts of the 50 evaluation episodes with DDIM-50 and PCM (tol 0.1), eager and --cuda-graphs
#    (limit 45 s each);
# 3. with SHARD=1, sharding (multi_gpu_check.py): nccl with one process per visible GPU, and gloo with 2 processes;
#    with SWEEP=1 the evaluation sweep at k = 10; with FULL_SWEEP=1 the README's four sweeps (not within 8 minutes).
#
# The machine needs python3 with a CUDA torch. Offline machines get the other packages from wheels in
# .devwheels/ (made here with: pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 -d .devwheels diffusers peft zarr numcodecs donfig google-crc32c
# gymnasium farama-notifications pymunk cffi pygame shapely), installed into a scratch folder.
# DEVICE=cpu QUICK=1 runs the same commands on a CPU, small, to check the script itself (graphs: a no-op there).
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
    graphs=(--models pusht --repeats 1 --conds 1) roll=(--episodes 2 --max-steps 16) repeats=1
    bench=(--conds 1 --repeats 1 --windows 50 --tols 0.1 --safeguards none --curve 1,50 --curve-repeats 2)
else
    graphs=(--repeats 5 --conds 2) roll=(--episodes 50) repeats=5
    bench=(--conds 4 --repeats 3 --curve-threads 1)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia_smi.csv" 2>&1 || true
$py -c "import torch, diffusers, peft, zarr, pymunk, gymnasium; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'diffusers', diffusers.__version__, 'peft', peft.__version__)"

echo "== 1. DDIM-T vs Picard / TAA / PCM, eager and CUDA graphs"
timeout 270 $py scripts/bench_graphs.py --device "$device" "${graphs[@]}" --out "$out/bench_graphs.json" \
    || echo "bench_graphs: exit $? (124: over its 270 s)"

echo "== 2. rollouts, eager and --cuda-graphs"
for s in ddim pcm; do
    for g in "" --cuda-graphs; do
        timeout 45 $py scripts/rollout.py --device "$device" --eager $g --sampler "$s" --seed 100000 "${roll[@]}" \
            --json "$out/rollout_$s${g:+_graphs}.json" | tail -n 2 || echo "rollout $s $g: exit $?"
    done
done

if [ -n "${SHARD:-}" ]; then
    echo "== 3. sharding"
    if [ "$device" = cpu ]; then
        $py -m torch.distributed.run --standalone --nproc_per_node=2 scripts/multi_gpu_check.py --cpu --size small \
            --repeats "$repeats" --out "$out/multi_gpu_gloo2.json"
    else
        n=$($py -c "import torch; print(torch.cuda.device_count())")
        $py -m torch.distributed.run --standalone --nproc_per_node="$n" scripts/multi_gpu_check.py --size small \
            --repeats "$repeats" --out "$out/multi_gpu_nccl.json"
        $py -m torch.distributed.run --standalone --nproc_per_node=2 scripts/multi_gpu_check.py --size small \
            --backend gloo --repeats "$repeats" --out "$out/multi_gpu_gloo2.json"
    fi
fi

if [ -n "${FULL_SWEEP:-}" ]; then  # the README's four sweeps side by side, packed into one file
    echo "== 4. evaluation sweeps"
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
    echo "== 4. sweep at k = 10"
    time $py scripts/eval_sweep.py --device "$device" --samplers ddim,picard,pcm --ks 1,10 --score-ks 10 \
        "${roll[@]}" --out /tmp/pcm_sweep_check | tail -n 12
fi

if [ -n "${LATENCY:-}" ]; then  # the older CPU-style latency table on the device (bench_samplers.py)
    echo "== 5. sampler latency"
    $py scripts/bench_samplers.py --device "$device" "${bench[@]}" --out "$out/bench_samplers.json"
fi
