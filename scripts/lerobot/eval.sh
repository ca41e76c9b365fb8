#!/usr/bin/env bash
# Evaluate a lerobot policy folder with lerobot's own evaluation (lerobot-eval) on gym-pusht, state-only.
#
#   scripts/lerobot/eval.sh CHECKPOINT [OUT]
#
# CHECKPOINT: a policy folder (checkpoints/<step>/pretrained_model) or its checkpoints/<step> parent.
# OUT (default CHECKPOINT/../eval_<N>ep_seed<SEED>): lerobot's eval_info.json (per-episode max reward,
# success, seed) and videos. Episodes are seeded SEED, SEED+1, ... (lerobot-eval's --seed is the first
# seed); the default 100000 names the project's evaluation seeds, but gym-pusht draws its start state from
# gymnasium's np_random, not our env's legacy RandomState: same seed numbers, different start states.
# Settings: N_EPISODES (50), BATCH (vector envs, default min(N, 10)), SEED (100000), EPISODE_LENGTH
# (300, lerobot's PushT setting; this package's protocol uses 200), LEROBOT_VENV.
set -euo pipefail
cd "$(dirname "$0")/../.."
die() { echo "error: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: scripts/lerobot/eval.sh CHECKPOINT [OUT]"
VENV=${LEROBOT_VENV:-.venv-lerobot}
CKPT=$1
[[ -d "$CKPT/pretrained_model" ]] && CKPT="$CKPT/pretrained_model"
[[ -f "$CKPT/config.json" && -f "$CKPT/model.safetensors" ]] \
    || die "$CKPT is not a lerobot policy folder (config.json + model.safetensors); pass checkpoints/<step>"
grep -q '"type": *"diffusion"' "$CKPT/config.json" || die "$CKPT is not a diffusion policy"
[[ -x "$VENV/bin/lerobot-eval" ]] || die "no lerobot-eval in $VENV; run \`make lerobot\` (or set LEROBOT_VENV)"
N=${N_EPISODES:-50}
BATCH=${BATCH:-$(( N < 10 ? N : 10 ))}
SEED=${SEED:-100000}
OUT=${2:-$(dirname "$CKPT")/eval_${N}ep_seed${SEED}}
[[ -e "$OUT" ]] && die "$OUT exists; remove it or pass another OUT"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 SDL_VIDEODRIVER=dummy
exec "$VENV/bin/lerobot-eval" "--policy.path=$CKPT" --policy.device=cpu --policy.use_amp=false \
    --env.type=pusht --env.obs_type=environment_state_agent_pos "--env.episode_length=${EPISODE_LENGTH:-300}" \
    "--eval.n_episodes=$N" "--eval.batch_size=$BATCH" --eval.use_async_envs=false \
    "--seed=$SEED" "--output_dir=$OUT"
