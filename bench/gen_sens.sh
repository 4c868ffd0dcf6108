#!/usr/bin/env bash
# Ten synthetic sessions of Sensorium 2023 sizes (36x64 frames, 300-frame trials, 8000 neurons)
# in the native layout, for the end-to-end and parity benchmarks; one process per session.
#
#   bash bench/gen_sens.sh [OUT_DIR=data/sens] [TRAIN_TRIALS=30]
set -euo pipefail
out=${1:-data/sens}
trials=${2:-30}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 0 9); do
    python3 -m neurotwin.cli.data synthetic --out "$tmp/gen$i" --mice 1 --preset sensorium \
        --seed "$i" --train_trials "$trials" --oracle_clips 2 --oracle_repeats 3 \
        --test_clips 1 --test_repeats 2 --no_progress > "$tmp/gen$i.log" 2>&1 &
done
wait
mkdir -p "$out"
mv "$tmp"/gen*/dynamic* "$out"/
echo "10 sessions in $out"
