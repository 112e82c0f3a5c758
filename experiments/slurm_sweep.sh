#!/bin/bash
# A jscale sweep as a SLURM array job: task I of N runs `jscale sweep CONFIG --worker I/N`,
# every task writing into one shared output directory (one atomically renamed file per point,
# so tasks never collide; a resubmitted task skips what is done).
#
#   sbatch --array=1-16 experiments/slurm_sweep.sh experiments/paper.toml /shared/runs/paper
#   # afterwards (or as a job with --dependency=afterok:<array job id>):
#   jscale sweep experiments/paper.toml --out /shared/runs/paper --plan    # "0 to run"
#   jscale figures /shared/runs/paper --out /shared/runs/paper/figures
#
# N is the array's size (SLURM_ARRAY_TASK_COUNT), so `--array=1-N` alone sets it; keep the
# indices 1..N.  Each task is a single-task job on one GPU: it never starts jax.distributed.
# Adjust the #SBATCH lines, the venv and the shared paths to your cluster.
#SBATCH --job-name=jscale-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%A_%a.out

set -euo pipefail
CONFIG=${1:?usage: sbatch --array=1-N $0 CONFIG.toml OUT_DIR}
OUT=${2:?usage: sbatch --array=1-N $0 CONFIG.toml OUT_DIR}
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=1-N}"
N=${SLURM_ARRAY_TASK_COUNT:?submit with sbatch --array=1-N}
JSCALE=${JSCALE:-jscale}                        # e.g. JSCALE=/shared/jscale/.venv/bin/jscale
export JSCALE_CACHE_DIR=${JSCALE_CACHE_DIR:-/tmp/jscale-cache-$USER}   # node-local token + XLA cache

echo "task $SLURM_ARRAY_TASK_ID/$N on $(hostname): $CONFIG -> $OUT"
exec "$JSCALE" sweep "$CONFIG" --out "$OUT" --worker "$SLURM_ARRAY_TASK_ID/$N" --quiet
