#!/usr/bin/env bash
# The GPU check: what one call on a lent GPU machine (9 minutes of its 10) measures, in three steps.
#
#   scripts/gpu-check.sh pack            here: the wheels the GPU machine lacks -> .whl/, Fashion-MNIST -> data/
#   scripts/gpu-check.sh run             there (carry .whl and data): the figures, under $OUT
#   scripts/gpu-check.sh collect DIR     here: DIR's files -> results/benchmarks/gpu-*.txt and the Fashion-MNIST
#                                        depth study's report in results/fashion-depth-gpu{,-responses}/
#
# `run --cpu-rehearsal` is the same script on the CPU at toy sizes (the test suite runs it, so the script is
# known to work before a GPU is lent). What `run` measures, in this order, each step cut at the deadline:
#   1. `resnet-repro bench` of ResNet-20/56/110 at batch 128, bf16, eager, with BN groups of 64 and without;
#   2. the same with torch.compile's reduce-overhead mode (BN groups of 64, the recipe's);
#   3. ResNet-1202's peak memory and step time at batch 128;
#   4. one deterministic fit twice (ResNet-20, a few hundred iterations): are the two metrics.csv identical?
#   5. the summed images/s of `run --parallel K --runs-per-gpu K`, K = 1, 2, 4: four seeds of ResNet-56 on the
#      CIFAR-10 recipe with Fashion-MNIST's images (CIFAR-10 cannot travel), at a small budget;
#   6. as much of experiments/fashion/depth.yaml at --budget 1/32 (plain-20/56, ResNet-20/56) as time allows.
# The files it writes (at most 8 come back from the device, none in subfolders): gpu-check.log (what ran, how
# long, the machine), gpu-bench.txt, gpu-memory.txt, gpu-determinism.txt, gpu-parallel.txt, gpu-depth.txt and
# fashion-depth-gpu.tar.gz (the depth study's run folders, checkpoints included, for report and responses).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=(jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0)  # jsonargparse[signatures]
DEPTH_RUNS=(plain20-s0 plain56-s0 resnet20-s0 resnet56-s0)

usage() { echo "usage: scripts/gpu-check.sh pack | run [--cpu-rehearsal] | collect DIR" >&2; exit 2; }

pack() {
    cd "$REPO"
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    make fashion-data
    du -sh .whl data/FashionMNIST
    echo "now, with the device tool: run 'bash scripts/gpu-check.sh run' with carry [\".whl\", \"data/FashionMNIST\"]" \
         "and timeout_s 600; then here: scripts/gpu-check.sh collect <the folder its files came back to>"
}

run() {
    local rehearsal=false
    [[ ${1-} == --cpu-rehearsal ]] && rehearsal=true
    : "${OUT:?set OUT to the folder the figures go to}"
    mkdir -p "$OUT"
    local log=$OUT/gpu-check.log
    if [[ -d $REPO/.whl ]] && ! "$PYTHON" -c "import jsonargparse" 2>/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$REPO"/.whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=offline PYTHONUNBUFFERED=1
    local cli=("$PYTHON" -m resnet_repro.cli)
    local work
    work=$(mktemp -d)
    # the runs read data/ relative to where they start: the carried Fashion-MNIST (or DATA_DIR's stand-in)
    ln -s "${DATA_DIR:-$REPO/data}" "$work/data"
    cd "$work"
    # The sizes: the GPU's, or toys that take the same path on the CPU
    local device=cuda nets=(resnet20 resnet56 resnet110) batch=128 steps=50 warmup=(20 60) big=resnet1202 big_steps=5
    local det_steps=300 parallel_budget=1/128 ks=(1 2 4) depth_budget=1/32 seconds=${GPU_CHECK_SECONDS:-540}
    local groups=("" 64) compile=(--compile reduce-overhead) workers=4 share_gpu=true step_limits=true
    local depth=$REPO/experiments/fashion/depth.yaml fit_settings=()
    if $rehearsal; then
        device=cpu nets=(resnet20) batch=8 steps=1 warmup=(1 2) big=resnet32 big_steps=1 groups=(64) workers=0
        det_steps=3 ks=() depth_budget=1/32000 share_gpu=false step_limits=false
        seconds=${GPU_CHECK_SECONDS:-900}  # a busy 2-core machine: only the deadline cuts a step
        compile=()  # torch.compile on the CPU costs minutes of C++ compilation: the rehearsal runs eager
        # and --runs-per-gpu is refused without GPUs: the depth study (two runs, --parallel splitting the cores)
        # stands for the K-runs-per-GPU measure, whose summed rate it prints the same way
        # the stand-in data's few images: a validation split that fits, and the depth study's structure on two nets
        fit_settings=(--data.init_args.val_size 40) DEPTH_RUNS=(plain20-s0 resnet20-s0) depth=depth.yaml
        cat >depth.yaml <<EOF
recipe: experiments/cifar10/base.yaml
evaluate: [single_view]
overrides: {data.class_path: resnet_repro.data.FashionMNISTDataModule, data.init_args.val_size: 40}
grid: {model.model: [plain20, resnet20]}
EOF
    fi
    # the depth study comes last and is kept these seconds (the steps before it stop at the deadline less these)
    local depth_reserve=150
    $rehearsal && depth_reserve=0
    local deadline=$((SECONDS + seconds - depth_reserve))

    # step NAME LIMIT FILE COMMAND...: COMMAND, its output appended to $OUT/FILE, cut at LIMIT seconds or at the
    # deadline (SIGTERM: a run stops between two iterations, resumable); its exit code and time in the log
    step() {
        local name=$1 limit=$2 file=$3 left=$((deadline - SECONDS))
        shift 3
        { $step_limits && ((limit < left)); } || limit=$left
        if ((limit < 15)); then
            echo "skipped  $name (deadline)" | tee -a "$log"
            return 0
        fi
        local start=$SECONDS rc=0
        echo "\$ ${*}" >>"$OUT/$file"
        timeout -k 20 "$limit" "$@" >>"$OUT/$file" 2>&1 || rc=$?
        printf '%-8s %s (%d s, limit %d s)\n' "$([[ $rc == 0 ]] && echo ok || echo "rc $rc")" "$name" \
            $((SECONDS - start)) "$limit" | tee -a "$log"
    }

    # summed_rate RUNS_ROOT LABEL: the runs' statuses and the sum of their training rates (each run's summary.json:
    # its own iterations' images/s, so the sum is the rate of runs that trained side by side)
    summed_rate() {
        "$PYTHON" - "$@" <<'EOF' || true
import json, sys
from pathlib import Path
summaries = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*/*/summary.json"))]
rates = [s.get("train_images_per_s") or 0 for s in summaries]
print(f"{sys.argv[2]}: {len(rates)} runs, {', '.join(s['status'] for s in summaries)}; "
      f"summed train images/s {sum(rates):,.0f} ({' + '.join(f'{r:,.0f}' for r in rates)})")
EOF
    }

    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
        lscpu | grep -m1 'Model name' || true
        "$PYTHON" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
        echo "git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown), rehearsal $rehearsal"
    } >"$log" 2>&1

    local bench=("${cli[@]}" bench --device "$device" --batch-size "$batch" --steps "$steps" --warmup "${warmup[0]}"
                 --warmup-limit "${warmup[1]}" --precision bf16-mixed --workers "$workers")
    local net group
    for net in "${nets[@]}"; do
        for group in "${groups[@]}"; do
            step "bench $net eager, BN groups ${group:-off}" 120 gpu-bench.txt "${bench[@]}" "$net" \
                ${group:+--bn-group-size "$group"}
        done
    done
    if ((${#compile[@]})); then
        for net in "${nets[@]}"; do
            step "bench $net reduce-overhead, BN groups of 64" 150 gpu-bench.txt "${bench[@]}" "$net" \
                --bn-group-size 64 "${compile[@]}"
        done
    fi
    step "bench $big (memory)" 120 gpu-memory.txt "${cli[@]}" bench "$big" --device "$device" \
        --batch-size "$batch" --steps "$big_steps" --warmup 2 --warmup-limit 2 --precision bf16-mixed --bn-group-size 64

    local fit=("${cli[@]}" fit --config "$REPO/experiments/cifar10/base.yaml" --seed_everything 0 --wandb false
               --data.class_path resnet_repro.data.FashionMNISTDataModule --model.model resnet20
               --trainer.max_steps "$det_steps" --trainer.val_check_interval "$det_steps"
               --trainer.deterministic true --trainer.benchmark false --trainer.enable_progress_bar false
               "${fit_settings[@]}")
    step "deterministic fit, first" 120 gpu-determinism.txt "${fit[@]}" --run_dir det-a
    step "deterministic fit, second" 120 gpu-determinism.txt "${fit[@]}" --run_dir det-b
    if cmp -s det-a/metrics.csv det-b/metrics.csv; then
        echo "the two deterministic fits' metrics.csv are identical ($det_steps iterations)"
    else
        echo "the two deterministic fits' metrics.csv DIFFER (or one is missing)"
        diff det-a/metrics.csv det-b/metrics.csv | head -5 || true
    fi >>"$OUT/gpu-determinism.txt" 2>&1

    # K runs of the same net on one GPU at once: their summed rate against K = 1
    cat >parallel.yaml <<'EOF'
recipe: experiments/cifar10/base.yaml
overrides: {data.class_path: resnet_repro.data.FashionMNISTDataModule}
runs: [{model.model: resnet56, seeds: [0, 1, 2, 3]}]
EOF
    local k
    for k in "${ks[@]}"; do
        local only=()
        for ((seed = 0; seed < k; seed++)); do only+=("resnet56-s$seed"); done
        step "run --parallel $k --runs-per-gpu $k" 120 gpu-parallel.txt "${cli[@]}" run parallel.yaml \
            --budget "$parallel_budget" --parallel "$k" --runs-per-gpu "$k" --runs-root "parallel-$k" --only "${only[@]}"
        summed_rate "parallel-$k" "runs-per-gpu $k" >>"$OUT/gpu-parallel.txt"
    done

    deadline=$((deadline + depth_reserve))
    step "fashion depth study at $depth_budget" $((deadline - SECONDS)) gpu-depth.txt "${cli[@]}" run \
        "$depth" --budget "$depth_budget" --parallel 4 $($share_gpu && echo --runs-per-gpu 4) \
        --runs-root depth --only "${DEPTH_RUNS[@]}"
    summed_rate depth "the depth study, --parallel 4" >>"$OUT/gpu-depth.txt"
    # the depth study's folders, without W&B's offline files (not needed for the report)
    tar -czf "$OUT/fashion-depth-gpu.tar.gz" --exclude=wandb -C depth .
    echo "done in $SECONDS s" | tee -a "$log"
}

collect() {
    local from=${1:?usage: scripts/gpu-check.sh collect DIR}
    from=$(cd "$from" && pwd)
    cd "$REPO"
    [[ -f $from/gpu-check.log ]] || { echo "$from has no gpu-check.log: give the folder 'run' wrote" >&2; exit 1; }
    local results=${RESULTS:-results}
    mkdir -p "$results/benchmarks"
    cp "$from"/gpu-*.txt "$results/benchmarks/"
    cp "$from/gpu-check.log" "$results/benchmarks/gpu-check.txt"
    local runs
    runs=${RUNS_ROOT:-runs}/gpu-check
    rm -rf "$runs"
    mkdir -p "$runs"
    tar -xzf "$from/fashion-depth-gpu.tar.gz" -C "$runs"
    local experiment
    experiment=$(find "$runs" -mindepth 1 -maxdepth 1 -type d | head -1)
    [[ -n $experiment ]] || { echo "$from/fashion-depth-gpu.tar.gz holds no runs: the depth study did not start" >&2; exit 1; }
    local cli=("${RESNET_REPRO:-$REPO/.venv/bin/resnet-repro}")
    "${cli[@]}" report "$experiment" --out "$results/fashion-depth-gpu"
    # responses reads the images where this machine keeps them (data/, make fashion-data), or RESPONSES_DATA's recipe
    "${cli[@]}" responses "$experiment" ${RESPONSES_DATA:+--data "$RESPONSES_DATA"} \
        --out "$results/fashion-depth-gpu-responses"
}

case ${1-} in
    pack) pack ;;
    run) shift; run "$@" ;;
    collect) shift; collect "$@" ;;
    *) usage ;;
esac
