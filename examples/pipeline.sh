#!/usr/bin/env bash
# The fundus-cli pipeline as plain commands, the way a user scripts it.
# Run it in an empty project folder:  bash /path/to/examples/pipeline.sh
# Each command prints its main output's path on stdout, so it can be captured.
set -euo pipefail

N_PHOTOS=${N_PHOTOS:-200}
PRESET=${PRESET:-demo}

fundus phantoms raw --n "$N_PHOTOS" --seed 0          # built-in demo photographs (skip with real data)
train=$(fundus ingest raw --size 128)                 # -> data/train.h5, data/holdout.h5
echo "training data: $train"
fundus info "$train" --json > data/train-info.json

ckpt=$(fundus train --arch gan --preset "$PRESET" --conditional --data "$train")
echo "checkpoint: $ckpt"
synthetic=$(fundus sample --checkpoint "$ckpt" --n 500 --grid data/synthetic-grid.png)
echo "synthetic data: $synthetic"
