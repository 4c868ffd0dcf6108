#!/usr/bin/env bash
# Entrypoint of the neurotwin image: the first argument picks the tool, the rest go to it unchanged.
#
#   train ...      -> neurotwin-train   (same as `python train.py ...`)
#   predict ...    -> neurotwin-predict (same as `python predict.py ...`)
#   data ...       -> neurotwin-data    (synthetic mice, Allen conversion)
#   torchrun ...   -> torchrun, for several GPUs or nodes
#   anything else  -> run as given (bash, python, nvidia-smi, ...)
#
# Outside a container it runs against whatever neurotwin the PATH finds (tests/test_docker.py).
set -euo pipefail

usage() {
    cat <<'USAGE'
neurotwin container: predictive models of mouse visual cortex

usage: docker run [DOCKER OPTIONS] IMAGE COMMAND [ARGS...]

commands:
  train [FLAGS]      train a model             (neurotwin-train / train.py; `train --help`)
  predict [FLAGS]    predict with a run, score  (neurotwin-predict / predict.py; `predict --help`)
  data SUBCOMMAND    write datasets             (neurotwin-data; `data --help`)
  torchrun ARGS      several GPUs or nodes, e.g.
                       torchrun --nproc_per_node 4 --no-python neurotwin-train --config ...
  bash | python ...  any other program in the image, run as given
  help, --help, -h   this message

volumes: /data (datasets), /runs (outputs); relative data/... and runs/... point there.
examples:
  train --config configs/demo.yaml --output_dir /runs/demo
  predict --output_dir /runs/demo
  data synthetic --out /data/synthetic
USAGE
}

# exec a neurotwin program, or say clearly that this environment lacks it.
run_tool() {
    local tool=$1
    shift
    if ! command -v -- "${tool}" >/dev/null 2>&1; then
        echo "neurotwin: '${tool}' is not on PATH: is the neurotwin package installed here?" >&2
        exit 127
    fi
    exec "${tool}" "$@"
}

if [[ $# -eq 0 ]]; then
    usage >&2
    echo "neurotwin: no command given" >&2
    exit 2
fi

command_name=$1
case "${command_name}" in
    help | -h | --help)
        usage
        exit 0
        ;;
    train)
        shift
        run_tool neurotwin-train "$@"
        ;;
    predict)
        shift
        run_tool neurotwin-predict "$@"
        ;;
    data)
        shift
        run_tool neurotwin-data "$@"
        ;;
    torchrun)
        exec "$@"
        ;;
    *)
        if command -v -- "${command_name}" >/dev/null 2>&1; then
            exec "$@"
        fi
        echo "neurotwin: unknown command '${command_name}' (not a neurotwin command, nor a program in the image)" >&2
        usage >&2
        exit 127
        ;;
esac
