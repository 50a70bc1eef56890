#!/usr/bin/env bash
# Training on several GPUs, then sampling a large synthetic set as independent shards.
# Example for a SLURM cluster; adapt the #SBATCH lines to yours.
#SBATCH --job-name=fundus-gan
#SBATCH --nodes=1
#SBATCH --gpus-per-node=4
#SBATCH --time=24:00:00
set -euo pipefail

# 1. Train with DistributedDataParallel over 4 GPUs (NCCL). --batch is per process.
#    Several nodes: add --nnodes N --node_rank R --rdzv_endpoint HOST:PORT (see `torchrun --help`).
torchrun --standalone --nproc_per_node 4 -m fundus_cli train \
    --arch gan --preset large --conditional --data data/train.h5 --out runs/gan-large

# 2. Sample 100,000 images as 10 shards of 10,000; each shard can be its own job (array job:
#    use $SLURM_ARRAY_TASK_ID as i). Shards made with the same --seed and --batch concatenate
#    to exactly the set one run would make.
for i in $(seq 0 9); do
    fundus sample --run runs/gan-large --n 10000 --seed 0 --seed-start $((i * 10000)) \
        --batch 256 --device cuda --out "data/synthetic-shard-$i.h5"
done
