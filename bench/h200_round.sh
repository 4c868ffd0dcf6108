#!/usr/bin/env bash
# The GPU rows of bench/RESULTS.md, part by part, each under its own time limit, in one command
# (the device lends a machine for minutes: few, full calls). Logs and JSON rows go to $OUT.
#
#   bash bench/h200_round.sh PART [PART ...]
#
# Parts: anchor (ViV1T's own step, ../shared/anchor copied to .anchor), fused_tests, fused,
# spikes, encode, analysis, presets, predict, sens_data (the fit parts' data: call it first, alone),
# fit_viv1t, fit_conv3d (_new: with the issue #15 changes), fit_pair (viv1t and conv3d at once on
# 2 GPUs), fit_four (both, before and after, on 4 GPUs). Wheels the GPU image lacks
# (schedulefree, ruamel.yaml, pytz) are installed from .whl/ when that folder exists.
set -uo pipefail
OUT=${OUT:-/tmp/h200_out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/versions.txt"

part() {  # part NAME SECONDS COMMAND...: run COMMAND with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "=== $name: exit $? after $((SECONDS - t0))s"
    tail -n 25 "$OUT/$name.log"
}

sens_data() {  # ten sensorium-size synthetic sessions in .gpudata/sens (kept while warm)
    [ -d .gpudata/sens ] || bash bench/gen_sens.sh .gpudata/sens "${1:-30}"
}

# fit quality (issue #15): a preset on the ten sessions for FIT_MINUTES of training, continued
# where the previous call left it (--resume: call the part again for the next minutes); _new =
# the preset with the readout positions from the data and the behaviour gain
# SENS_TRIALS: training trials per session of the data (the generator took over 8 minutes for
# ten 20-trial sessions on 16 cores, so the 60 would not fit one call)
FIT_MINUTES=${FIT_MINUTES:-7}
SENS_TRIALS=${SENS_TRIALS:-20}
fit_run() {  # fit_run PART GPU
    local name=$1 preset=viv1t extra=()
    case $name in *conv3d*) preset=cnn3d ;; esac
    case $name in *_new) extra=(-- --readout_init_positions true --modulator gain) ;; esac
    CUDA_VISIBLE_DEVICES=$2 part "$name" $((FIT_MINUTES * 60 + 90)) python3 bench/fit_quality.py \
        --config "configs/$preset.yaml" --data_dir .gpudata/sens --minutes "$FIT_MINUTES" \
        --epochs 1000 --seeds 0 --resume --output_dir ".gpudata/$name" --json "$OUT/$name.json" \
        ${extra[@]+"${extra[@]}"}
}
fit_parallel() {  # fit_parallel PART...: one part per GPU, all at once
    local gpu=0
    for name in "$@"; do fit_run "$name" "$gpu" > "$OUT/$name.part.txt" 2>&1 & gpu=$((gpu + 1)); done
    wait
    cat "$OUT"/*.part.txt
}

for p in "$@"; do
    case $p in
    anchor) part anchor 200 python3 .anchor/viv1t_bench.py --steps 30 --configs readme_b1_compile ;;
    fused_tests) part fused_tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_vivit_fused.py ;;
    fused) part fused 260 python3 bench/fused_block.py --budget_s 240 ;;
    spikes) part spikes 80 python3 bench/spikes_throughput.py --device cuda \
        --data_dir .gpudata/spikes --trials 200 --epochs 1 --conv auto --workers 16 --json "$OUT/spikes.json" ;;
    encode) part encode 90 python3 bench/encode_throughput.py --network torchvision:vit_b_16 \
        --pooling cls --sessions 10 --frames_per_session 194000 --measure_frames 20000 \
        --batch_size 512 --neurons 8000 --train_stimuli 100000 --features 768 \
        --regressors ridge ridgecv --json "$OUT/encode.json" ;;
    analysis) part analysis 90 python3 bench/analysis_throughput.py --config configs/viv1t.yaml \
        --device cuda --sessions 10 --neurons 8000 --arf_sessions 1 --noise_images 4000 \
        --block_frames 30 --batch_size 16 --json "$OUT/analysis.json" ;;
    presets) for c in dwiseneuro sensorium_gru; do
        part "preset_$c" 90 python3 bench/train_throughput.py --config "configs/$c.yaml" \
            --mode model --steps 10 --warmup 5 --batch_size 1 --json "$OUT/preset_$c.json"
    done ;;
    predict) part predict 180 python3 bench/predict_throughput.py --random 10 \
        --data_dir .gpudata/random --config configs/viv1t.yaml --workdir .gpudata/predict \
        --device cuda --batch_size 8 --num_workers 8 --repeats 1 --json "$OUT/predict.json" ;;
    sens_data) part sens_data 590 bash -c "[ -d .gpudata/sens ] || bash bench/gen_sens.sh .gpudata/sens $SENS_TRIALS" ;;
    fit_viv1t | fit_conv3d | fit_viv1t_new | fit_conv3d_new) sens_data "$SENS_TRIALS" && fit_run "$p" 0 ;;
    fit_pair) sens_data "$SENS_TRIALS" && fit_parallel fit_viv1t fit_conv3d ;;  # 2 GPUs
    fit_four) sens_data "$SENS_TRIALS" && fit_parallel fit_viv1t fit_conv3d fit_viv1t_new fit_conv3d_new ;;
    *) echo "unknown part $p" ;;
    esac
done
