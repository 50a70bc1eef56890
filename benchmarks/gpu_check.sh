#!/usr/bin/env bash
# Every GPU check of issue 10 in one prepared run (about 8 minutes on one H100/H200):
#   1. the CUDA tests (tests/test_cuda.py: bf16 and fp32 training, resume, torch.compile, a
#      GPU-trained checkpoint sampled on a CPU);
#   2. `fundus ingest` of a folder of photographs at 256 px (20 % holdout);
#   3. `fundus train --arch gan --preset large --size 256 --conditional --amp bf16` for
#      EAGER_MIN minutes, then the same with --compile for COMPILED_MIN minutes;
#      steady-state images/s read from each run's metrics.jsonl (the second half of its lines,
#      so that start-up and compilation do not count);
#   4. 64 samples of each run as a grid, and `fundus evaluate` of the first run's samples (eager,
#      or compiled with EAGER_MIN=0).
#
# Usage, from the project root on the GPU machine (the checkout's own fundus_cli is run):
#     bash benchmarks/gpu_check.sh RAW_FOLDER LABELS_CSV OUT_FOLDER
# e.g. bash benchmarks/gpu_check.sh ../shared/data/idrid516/images ../shared/data/idrid516/labels.csv gpu-out
# Environment: PYTHON (python3), EAGER_MIN (2; 0 leaves the eager run out, so that the compiled one
# has the GPU and the lease alone), COMPILED_MIN (2.5: compiling alone took 95 s on an
# H200 with an empty cache, 2026-11-27, and 1.5 minutes left one step), WORK (a temporary folder),
# SIZE (256), AMP (bf16), TESTS (1; 0 leaves out step 1), PARALLEL (0; 1 trains the eager and the
# compiled run at the same time: the GPU is latency-bound at this network size, so two runs get
# most of its time each, and their images/s then read lower than alone), SAMPLE_EVERY (passed to
# --sample-every when set: intermediate grids), COMPILED_ARGS (more `fundus train` options for the
# compiled run only, e.g. "--lr 0.0001": compilation leaves the arithmetic as it is, so with
# PARALLEL=1 one lease compares two settings side by side).
# With SAMPLE_EVERY, trajectory-RUN.png holds up to four of each run's intermediate grids, evenly
# spaced and halved, left to right and top to bottom: whether the samples gain or lose variety.
# Each step runs even when an earlier one fails; the exit status is the number of failed steps.
set -u
RAW=${1:?RAW_FOLDER}; LABELS=${2:?LABELS_CSV}; OUT=${3:?OUT_FOLDER}
PY=${PYTHON:-python3}
EAGER_MIN=${EAGER_MIN:-2}; COMPILED_MIN=${COMPILED_MIN:-2.5}
TESTS=${TESTS:-1}; PARALLEL=${PARALLEL:-0}
SIZE=${SIZE:-256}; AMP=${AMP:-bf16}  # SIZE=32 AMP=off: a smoke run of this script on a CPU
WORK=${WORK:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
failed=0
step() {  # step NAME SECONDS COMMAND...: one timed step, its output in the log
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@"; local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || failed=$((failed + 1))
}

{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
[ "$TESTS" = 1 ] && step tests 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step ingest 120 "$PY" -m fundus_cli ingest "$RAW" --out "$WORK/data" --size "$SIZE" --labels "$LABELS" \
    --id-column file --label-column any_lesion --holdout-fraction 0.2 --workers 0 --force
common=(train --arch gan --preset large --size "$SIZE" --conditional --amp "$AMP" --data "$WORK/data/train.h5")
[ -n "${SAMPLE_EVERY:-}" ] && common+=(--sample-every "$SAMPLE_EVERY")
read -r -a compiled_args <<< "${COMPILED_ARGS:-}"
compiled=(train-compiled $(( ${COMPILED_MIN%.*} * 60 + 180 )) "$PY" -m fundus_cli "${common[@]}" --compile
          "${compiled_args[@]}" --out "$WORK/compiled" --minutes "$COMPILED_MIN")
if [ "$PARALLEL" = 1 ]; then
    step "${compiled[@]}" > "$WORK/train-compiled.log" 2>&1 &
    compiled_pid=$!
fi
runs=(compiled)
if [ "$EAGER_MIN" != 0 ]; then
    runs=(eager compiled)
    step train-eager $(( ${EAGER_MIN%.*} * 60 + 120 )) "$PY" -m fundus_cli "${common[@]}" --out "$WORK/eager" --minutes "$EAGER_MIN"
fi
if [ "$PARALLEL" = 1 ]; then
    wait "$compiled_pid"; cat "$WORK/train-compiled.log"
    grep -q '^=== train-compiled: exit 0' "$WORK/train-compiled.log" || failed=$((failed + 1))
else
    step "${compiled[@]}"
fi
for run in "${runs[@]}"; do
    [ -f "$WORK/$run/metrics.jsonl" ] && cp "$WORK/$run/metrics.jsonl" "$OUT/metrics-$run.jsonl"
    step "sample-$run" 120 "$PY" -m fundus_cli sample --run "$WORK/$run" --n 64 --out "$WORK/$run-samples.h5" \
        --grid "$OUT/grid-$run.png" --force
done
"$PY" - "$WORK" "$OUT" "${runs[@]}" <<'EOF'
import json, statistics, sys
from pathlib import Path
for run in sys.argv[3:]:
    grids = sorted((Path(sys.argv[1]) / run).glob("samples-*.png"))
    if len(grids) > 1:  # the trajectory: up to four intermediate grids, evenly spaced, halved
        import cv2, numpy as np
        picked = [grids[round(i * (len(grids) - 1) / 3)] for i in range(4)] if len(grids) > 4 else grids
        tiles = [cv2.resize(cv2.imread(str(g)), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) for g in picked]
        tiles += [np.zeros_like(tiles[0])] * (4 - len(tiles))
        cv2.imwrite(str(Path(sys.argv[2]) / f"trajectory-{run}.png"),
                    np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]))
        print(run, "trajectory:", ", ".join(g.stem for g in picked))
    p = Path(sys.argv[1]) / run / "metrics.jsonl"
    if not p.is_file():
        print(run, "no metrics.jsonl"); continue
    rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    speeds = [r["images_per_s"] for r in rows if r.get("images_per_s")]
    late = speeds[len(speeds) // 2:]
    print(f"{run}: {rows[-1]['step']} steps; images/s median of the later half of {len(speeds)} log lines: "
          f"{statistics.median(late):.0f} (range {min(late):.0f}-{max(late):.0f})" if late else f"{run}: no speeds")
    # whether the discriminator learns at all: a hinge loss stuck at 2.0 with D(real) = D(fake)
    # is the signature of the collapsed 256-px runs of 2026-11-26/27 (fixed DiffAugment policy)
    half = rows[len(rows) // 2:]
    if half and all("d_real" in r and "d_loss" in r for r in half):
        gaps = [r["d_real"] - r["d_fake"] for r in half]
        print(f"{run}: later half, D(real) - D(fake) median {statistics.median(gaps):.3f} "
              f"(max {max(gaps):.3f}), d_loss median {statistics.median(r['d_loss'] for r in half):.3f}, "
              f"ADA p at the end {half[-1].get('ada_p', 'off')}")
EOF
step evaluate 150 "$PY" -m fundus_cli evaluate --real "$WORK/data/holdout.h5" --synthetic "$WORK/${runs[0]}-samples.h5" \
    --train "$WORK/data/train.h5" --out "$WORK/evaluate" --no-usefulness
for f in report.json grids.png; do [ -f "$WORK/evaluate/$f" ] && cp "$WORK/evaluate/$f" "$OUT/evaluate-${runs[0]}-$f"; done
echo "=== failed steps: $failed"
} 2>&1 | tee "$OUT/log.txt"
exit "$(grep -c '^=== .*: exit [1-9]' "$OUT/log.txt")"
