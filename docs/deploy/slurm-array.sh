#!/bin/bash
# slurm-array.sh - txt2img over a prompt file as a Slurm job array: array
# task K of N draws the lines whose 0-based index i has i % N == K
# (--shard K/N), into one shared output directory.
#
#   sbatch --array=0-7 docs/deploy/slurm-array.sh            # 8 shards
#   sbatch --array=0-7 docs/deploy/slurm-array.sh --steps 30 # extra txt2img flags
#
# The array must be 0..N-1 (SLURM_ARRAY_TASK_COUNT is N; a %limit such as
# --array=0-7%2 is fine). A task that is pre-empted or requeued
# (--requeue) runs again with --skip-existing: it makes only the images
# its shard is missing. Every image appends a line to $OUT/manifest.jsonl.
# Threads: txt2img uses the CPUs Slurm gives the task (its affinity mask
# and cgroup), so --cpus-per-task is all it needs.
#
# Settings (environment, exported to the job by sbatch, or edit here):
#   TXT2IMG  the executable       (make txt2img CONFIG=... H=512 W=512 [ARCH=x86-64-v3])
#   WEIGHTS  the checkpoint
#   PROMPTS  the prompt file      (plain lines, webui option lines or JSON Lines)
#   OUT      the output directory (shared by the tasks)
#
#SBATCH --job-name=txt2img
#SBATCH --array=0-7
#SBATCH --cpus-per-task=16
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=txt2img-%A_%a.log
set -euo pipefail

TXT2IMG=${TXT2IMG:-./txt2img-512x512}
WEIGHTS=${WEIGHTS:-v1-5-pruned-emaonly.safetensors}
PROMPTS=${PROMPTS:-prompts.txt}
OUT=${OUT:-out}

# The command line of shard K of N (then the script's own arguments).
shard_command() {
    local k=$1 n=$2
    shift 2
    exec "$TXT2IMG" --weights "$WEIGHTS" --prompts "$PROMPTS" --shard "$k/$n" --skip-existing -o "$OUT" "$@"
}

shard_command "${SLURM_ARRAY_TASK_ID:?not a Slurm array task (sbatch --array=0-N)}" \
              "${SLURM_ARRAY_TASK_COUNT:?not a Slurm array task (sbatch --array=0-N)}" "$@"
