#!/usr/bin/env bash
# Train, or resume, a small state-only lerobot DiffusionPolicy on the PushT LeRobotDataset with lerobot's
# own trainer (lerobot-train), on CPU with ONE thread, in the background (nohup), offline.
#
#   scripts/lerobot/train.sh            start (or resume, if OUT has a checkpoint) in the background
#   scripts/lerobot/train.sh --fg       the same in the foreground (smoke runs: STEPS=20 OUT=/tmp/x)
#
# Settings (environment variables, defaults below): LEROBOT_VENV, DATASET (made by
# scripts/lerobot/make_dataset.py), OUT (run folder; checkpoints/<step>/pretrained_model is lerobot's own
# policy folder), LOG, STEPS, BATCH, SAVE_FREQ. A resume reads everything but STEPS from the checkpoint's
# train_config.json. STEPS is passed on a resume too: the same STEPS leaves the cosine learning-rate schedule
# unchanged by a restart; a larger one continues a finished run (the schedule is rebuilt over the new STEPS
# and picks up at the checkpoint's step: from 24,000 to 34,000 the rate restarts at 0.21 x 1e-4 and decays
# to 0 at 34,000).
#
# Policy: horizon 16, 8 actions, 2 observation steps, down_dims [64,128,256] (4.55M parameters),
# observation.state (agent x, y) + observation.environment_state (gym-pusht's 16 T corners), DDIM with
# 50 inference steps: training is the same as with DDPM (same betas, same add_noise); DDIM makes the
# policy's own sampler the deterministic trajectory that pcm-policy's exact samplers reproduce at tol 0.
# normalization_mapping adds "ENV": MIN_MAX. lerobot 0.6.1's DiffusionConfig maps only VISUAL, STATE and
# ACTION, so without it observation.environment_state (FeatureType.ENV) reaches the UNet in raw pixels
# (12..489) beside a [-1, 1] state: the run of 2026-12-02/03 (steps 500-4,000) trained that way and its
# actions ignore where the T is (docs/lerobot.md, "Why the first run scored flat").
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${LEROBOT_VENV:-.venv-lerobot}
DATASET=${DATASET:-runs/lerobot/pusht_keypoints_dataset}
OUT=${OUT:-runs/lerobot/diffusion_pusht_keypoints}
LOG=${LOG:-$OUT.log}
STEPS=${STEPS:-24000}
BATCH=${BATCH:-64}
SAVE_FREQ=${SAVE_FREQ:-500}
FG=0
[[ "${1:-}" == "--fg" ]] && FG=1

die() { echo "error: $*" >&2; exit 2; }
[[ -x "$VENV/bin/lerobot-train" ]] || die "no lerobot-train in $VENV; run \`make lerobot\` (or set LEROBOT_VENV)"
[[ -f "$DATASET/meta/info.json" ]] || die "$DATASET is not a LeRobotDataset; make it with scripts/lerobot/make_dataset.py"
if [[ -f "$OUT.pid" ]] && kill -0 "$(cat "$OUT.pid")" 2>/dev/null; then
    die "a training of $OUT is already running (pid $(cat "$OUT.pid")); stop it first or wait"
fi

export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_DATASETS_DISABLE_PROGRESS_BARS=1 SDL_VIDEODRIVER=dummy
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$(dirname "$OUT")" "$(dirname "$LOG")"

LAST="$OUT/checkpoints/last/pretrained_model/train_config.json"
if [[ -f "$LAST" ]]; then
    echo "resuming $OUT from step $(basename "$(readlink -f "$OUT/checkpoints/last")")"
    ARGS=(--resume=true "--config_path=$LAST" "--steps=$STEPS")
else
    [[ -e "$OUT" ]] && die "$OUT exists without a checkpoint to resume; remove it or choose another OUT"
    "$VENV/bin/python" scripts/lerobot/make_dataset.py --check "$DATASET" >/dev/null \
        || die "dataset check failed for $DATASET"
    ARGS=(--dataset.repo_id=local/pusht_keypoints "--dataset.root=$DATASET"
          --policy.type=diffusion '--policy.down_dims=[64,128,256]'
          --policy.horizon=16 --policy.n_action_steps=8 --policy.n_obs_steps=2
          --policy.noise_scheduler_type=DDIM --policy.num_inference_steps=50
          '--policy.normalization_mapping={"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ENV": "MIN_MAX", "ACTION": "MIN_MAX"}'
          --policy.device=cpu --policy.push_to_hub=false --wandb.enable=false
          --num_workers=0 "--steps=$STEPS" "--batch_size=$BATCH" "--save_freq=$SAVE_FREQ" --log_freq=100
          --seed=1000 "--output_dir=$OUT")
fi
echo "$(date -u +%FT%TZ) lerobot-train ${ARGS[*]}" >> "$LOG"
if [[ $FG == 1 ]]; then
    exec "$VENV/bin/lerobot-train" "${ARGS[@]}"
fi
nohup "$VENV/bin/lerobot-train" "${ARGS[@]}" >> "$LOG" 2>&1 < /dev/null &
echo $! > "$OUT.pid"
echo "started pid $! -> $OUT (log $LOG)"
