#!/usr/bin/env bash
# The GPU check: what two calls on a lent GPU machine measure. A lent machine gives 15 minutes in all, at most 10
# per call, each start a minute or more, and none starts with under 4 minutes left: so two calls of about 4.5
# minutes, the cheap eager figures in the first, compile in the second, so that a failed or lost second call
# still leaves the first's figures.
#
#   scripts/gpu-check.sh pack              here: the wheels the GPU machine lacks -> .whl/, Fashion-MNIST -> data/
#   scripts/gpu-check.sh run 1|2           there (carry .whl and data/FashionMNIST): call 1 or 2's figures under $OUT
#   scripts/gpu-check.sh collect DIR...    here: the calls' files -> results/benchmarks/gpu-*.txt, and the
#                                          Fashion-MNIST depth study's report in results/fashion-depth-gpu{,-responses}/
#
# Call 1 (eager): `resnet-repro bench` of ResNet-20 and ResNet-56 at batch 128 in bf16, with BN groups of 64 and
# without (each with its profiler line: kernels and GPU-busy ms per step); ResNet-1202's peak memory; one
# deterministic fit twice (are the two metrics.csv identical?); the summed images/s of K runs of ResNet-56 on one
# GPU, K = 1 and 4 (training alone: summary.json's rate leaves out evaluations and checkpoints).
# Call 2 (compiled, then the depth study): the same benches with torch.compile's reduce-overhead mode, then as
# much of experiments/fashion/depth.yaml at --budget 1/32 (plain-20/56, ResNet-20/56, four runs at once) as time
# leaves, whose run folders come back with their checkpoints' weights only.
# Each step is cut at its own limit and at the call's deadline; each call ends by printing every figure it made,
# so that they survive in the output's tail. `run N --cpu-rehearsal` is the same script on the CPU at toy sizes
# (compile in its default mode; K runs side by side on the cores where a GPU would share its memory): the test
# suite runs both calls and `collect`, so the script is known to work before a GPU is lent.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=(jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0)  # jsonargparse[signatures]

usage() { echo "usage: scripts/gpu-check.sh pack | run 1|2 [--cpu-rehearsal] | collect DIR..." >&2; exit 2; }

pack() {
    cd "$REPO"
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    make fashion-data
    du -sh .whl data/FashionMNIST
    echo "now, with the device tool: run 'bash scripts/gpu-check.sh run 1' with carry [\".whl\", \"data/FashionMNIST\"]" \
         "and timeout_s 300, then the same with 'run 2'; here: scripts/gpu-check.sh collect <the folders of both>"
}

run() {
    local part=${1-} rehearsal=false
    [[ $part == 1 || $part == 2 ]] || usage
    [[ ${2-} == --cpu-rehearsal ]] && rehearsal=true
    : "${OUT:?set OUT to the folder the figures go to}"
    mkdir -p "$OUT"
    local log=$OUT/gpu-check-$part.log
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
    local device=cuda nets=(resnet20 resnet56) batch=128 steps=30 warmup=(10 40) big=resnet1202 workers=4
    local compile=reduce-overhead det_steps=200 parallel_net=resnet56 parallel_budget=1/256 ks=(1 4)
    local sharing=(--runs-per-gpu)
    local depth_budget=1/32 depth_runs=(plain20-s0 plain56-s0 resnet20-s0 resnet56-s0)
    local depth=$REPO/experiments/fashion/depth.yaml fit_settings=() seconds=${GPU_CHECK_SECONDS:-270} limits=true
    local data="data.class_path: resnet_repro.data.FashionMNISTDataModule"
    if $rehearsal; then
        device=cpu nets=(resnet20) batch=8 steps=1 warmup=(1 2) big=resnet32 workers=0 compile=default det_steps=3
        parallel_net=resnet20 parallel_budget=1/16000 ks=(2) sharing=() depth_budget=1/32000
        depth_runs=(plain20-s0 resnet20-s0)
        seconds=${GPU_CHECK_SECONDS:-900} limits=false  # a busy 2-core machine: only the deadline cuts a step
        # the stand-in data's few images: a validation split that fits, batches of the benches' size (bf16 on a
        # CPU is slow), and the depth study's shape on two nets
        fit_settings=(--data.init_args.val_size 40 --data.init_args.batch_size "$batch") depth=depth.yaml
        data+=", data.init_args.val_size: 40, data.init_args.batch_size: $batch"
        cat >depth.yaml <<EOF
recipe: experiments/cifar10/base.yaml
evaluate: [single_view]
overrides: {$data}
grid: {model.model: [plain20, resnet20]}
EOF
    fi
    local deadline=$((SECONDS + seconds))

    # step NAME LIMIT FILE COMMAND...: COMMAND, its output appended to $OUT/FILE, cut at LIMIT seconds or at the
    # deadline (SIGTERM: a run stops between two iterations, resumable); its exit code and time in the log
    step() {
        local name=$1 limit=$2 file=$3 left=$((deadline - SECONDS))
        shift 3
        { $limits && ((limit < left)); } || limit=$left
        if ((limit < 10)); then
            echo "skipped  $name (deadline)" | tee -a "$log"
            return 0
        fi
        local start=$SECONDS rc=0
        echo "\$ ${*}" >>"$OUT/$file"
        timeout -k 10 "$limit" "$@" >>"$OUT/$file" 2>&1 || rc=$?
        printf '%-8s %s (%d s, limit %d s)\n' "$([[ $rc == 0 ]] && echo ok || echo "rc $rc")" "$name" \
            $((SECONDS - start)) "$limit" | tee -a "$log"
    }

    # summed_rate RUNS_ROOT LABEL: the runs' statuses and the sum of their training rates (each run's summary.json:
    # its own iterations' images/s, evaluations and checkpoints left out, so the sum is the rate of runs that
    # trained side by side)
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
        echo "git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown), call $part, rehearsal $rehearsal"
    } >"$log" 2>&1

    local bench=("${cli[@]}" bench --device "$device" --batch-size "$batch" --steps "$steps" --warmup "${warmup[0]}"
                 --warmup-limit "${warmup[1]}" --precision bf16-mixed --workers "$workers")
    local net group
    if [[ $part == 1 ]]; then
        for net in "${nets[@]}"; do
            for group in "" 64; do
                step "bench $net eager, BN groups ${group:-off}" 50 gpu-bench.txt "${bench[@]}" "$net" \
                    ${group:+--bn-group-size "$group"}
            done
        done
        step "bench $big (memory)" 40 gpu-memory.txt "${cli[@]}" bench "$big" --device "$device" \
            --batch-size "$batch" --steps 1 --warmup 1 --warmup-limit 1 --precision bf16-mixed --bn-group-size 64
        local fit=("${cli[@]}" fit --config "$REPO/experiments/cifar10/base.yaml" --seed_everything 0 --wandb false
                   --data.class_path resnet_repro.data.FashionMNISTDataModule --model.model resnet20
                   --trainer.max_steps "$det_steps" --trainer.val_check_interval "$det_steps"
                   --trainer.deterministic true --trainer.benchmark false --trainer.enable_progress_bar false
                   "${fit_settings[@]}")
        step "deterministic fit, first" 30 gpu-determinism.txt "${fit[@]}" --run_dir det-a
        step "deterministic fit, second" 30 gpu-determinism.txt "${fit[@]}" --run_dir det-b
        if cmp -s det-a/metrics.csv det-b/metrics.csv; then
            echo "the two deterministic fits' metrics.csv are identical ($det_steps iterations)"
        else
            echo "the two deterministic fits' metrics.csv DIFFER (or one is missing)"
            diff det-a/metrics.csv det-b/metrics.csv | head -5 || true
        fi >>"$OUT/gpu-determinism.txt" 2>&1
        # K runs of the same net on one GPU at once (on the CPU: side by side on its cores), their summed rate
        cat >parallel.yaml <<EOF
recipe: experiments/cifar10/base.yaml
overrides: {$data}
runs: [{model.model: $parallel_net, seeds: [0, 1, 2, 3]}]
EOF
        local k only
        for k in "${ks[@]}"; do
            only=()
            for ((seed = 0; seed < k; seed++)); do only+=("$parallel_net-s$seed"); done
            step "$k run(s) of $parallel_net at once" 35 gpu-parallel.txt "${cli[@]}" run parallel.yaml \
                --budget "$parallel_budget" --parallel "$k" ${sharing[@]+"${sharing[@]}" "$k"} \
                --runs-root "parallel-$k" --only "${only[@]}"
            summed_rate "parallel-$k" "$k run(s) at once" >>"$OUT/gpu-parallel.txt"
        done
    else
        for net in "${nets[@]}"; do
            step "bench $net $compile, BN groups of 64" 60 gpu-compiled.txt "${bench[@]}" "$net" --bn-group-size 64 \
                --compile "$compile"
        done
        step "fashion depth study at $depth_budget" $((deadline - SECONDS)) gpu-depth.txt "${cli[@]}" run \
            "$depth" --budget "$depth_budget" --parallel 4 ${sharing[@]+"${sharing[@]}" 4} --runs-root depth \
            --only "${depth_runs[@]}"
        summed_rate depth "the depth study, 4 runs at once" >>"$OUT/gpu-depth.txt"
        # the depth study's folders, each checkpoint cut to what report and responses read (the weights and the
        # net's settings: no momentum), without W&B's offline files: well under the 16 MiB a returned file may hold
        "$PYTHON" - depth <<'EOF'
import sys
from pathlib import Path
import torch
for path in Path(sys.argv[1]).glob("*/*/checkpoints/last.ckpt"):
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({key: state[key] for key in ("state_dict", "hyper_parameters", "global_step", "epoch",
                                            "pytorch-lightning_version") if key in state}, path)
EOF
        tar -czf "$OUT/fashion-depth-gpu.tar.gz" --exclude=wandb -C depth .
    fi
    echo "done in $SECONDS s" | tee -a "$log"
    figures "$OUT"
}

# figures DIR: every figure the calls wrote there, in a few lines (the output's tail keeps them)
figures() {
    echo "== figures =="
    grep -hE "^resnet[0-9]+, batch|^ +(step|fit|compute|profile|dataloader):|identical|DIFFER|run\(s\) at once|the depth study" \
        "$1"/gpu-*.txt 2>/dev/null | sed -E 's/ +\(after [^)]*\)//' || true
    grep -h "^ok\|^rc\|^skipped" "$1"/gpu-check-*.log 2>/dev/null || true
}

collect() {
    (($#)) || usage
    local from dirs=()
    for from in "$@"; do
        dirs+=("$(cd "$from" && pwd)")
        [[ -n $(find "${dirs[-1]}" -maxdepth 1 -name 'gpu-check-*.log') ]] || {
            echo "$from has no gpu-check-*.log: give the folders 'run 1' and 'run 2' wrote" >&2; exit 1; }
    done
    cd "$REPO"
    local results=${RESULTS:-results}
    mkdir -p "$results/benchmarks"
    for from in "${dirs[@]}"; do
        cp "$from"/gpu-*.txt "$results/benchmarks/" 2>/dev/null || true
        for log in "$from"/gpu-check-*.log; do cp "$log" "$results/benchmarks/$(basename "${log%.log}").txt"; done
    done
    local tarball=""
    for from in "${dirs[@]}"; do
        [[ -f $from/fashion-depth-gpu.tar.gz ]] && tarball=$from/fashion-depth-gpu.tar.gz
    done
    [[ -n $tarball ]] || { echo "no fashion-depth-gpu.tar.gz: call 2 did not reach the depth study" >&2; return 0; }
    local runs=${RUNS_ROOT:-runs}/gpu-check experiment
    rm -rf "$runs"
    mkdir -p "$runs"
    tar -xzf "$tarball" -C "$runs"
    experiment=$(find "$runs" -mindepth 1 -maxdepth 1 -type d | head -1)
    [[ -n $experiment ]] || { echo "$tarball holds no runs: the depth study did not start" >&2; exit 1; }
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
