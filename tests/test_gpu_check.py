"""scripts/gpu-check.sh's CPU rehearsal: the GPU check's every step, at toy sizes on stand-in Fashion-MNIST, then
`collect` into a results folder, so the one call a lent GPU machine gets is known to work before it is lent."""

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from resnet_repro.data.fashion_mnist import write_standin

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu-check.sh"


@pytest.mark.slow
def test_the_gpu_check_rehearsed_on_the_cpu_writes_every_figure_and_collects_into_results(tmp_path):
    write_standin(tmp_path / "data")
    out, results = tmp_path / "out", tmp_path / "results"
    env = {**os.environ, "OUT": str(out), "DATA_DIR": str(tmp_path / "data"), "PYTHON": sys.executable,
           "RESULTS": str(results), "RUNS_ROOT": str(tmp_path / "runs"),
           "RESNET_REPRO": str(Path(sys.executable).parent / "resnet-repro")}
    rehearsal = subprocess.run(["bash", str(SCRIPT), "run", "--cpu-rehearsal"], capture_output=True, text=True,
                               env=env, timeout=1200)
    log = (out / "gpu-check.log").read_text()
    assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr
    steps = [line for line in log.splitlines() if re.match(r"(ok|rc \d+|skipped) ", line)]
    assert steps and all(line.startswith("ok ") for line in steps), log
    assert len(steps) == 5  # one bench, the memory bench, two deterministic fits, and last the depth study
    assert steps[-1].startswith("ok       fashion depth study at 1/32000")

    bench = (out / "gpu-bench.txt").read_text()
    assert re.search(r"fit: +[\d,]+ images/s", bench) and "BN groups 64" in bench
    assert re.search(r"resnet32, batch 8.*\n(.*\n)*\s+fit: .*MiB", (out / "gpu-memory.txt").read_text())
    assert "metrics.csv are identical (3 iterations)" in (out / "gpu-determinism.txt").read_text()
    # on the CPU (no GPU to share) the depth study's two runs side by side stand for the runs-per-GPU measure
    depth = (out / "gpu-depth.txt").read_text()
    assert re.search(r"the depth study, --parallel 4: 2 runs, finished, finished; summed train images/s [\d,]+ "
                     r"\([\d,]+ \+ [\d,]+\)", depth), depth
    with tarfile.open(out / "fashion-depth-gpu.tar.gz") as tar:  # <runs root>/<experiment>@1-32000/<run>/
        runs = sorted(Path(name).parts[-3:-1] for name in tar.getnames() if name.endswith("/summary.json"))
    assert [run for _, run in runs] == ["plain20-s0", "resnet20-s0"]
    assert len({experiment for experiment, _ in runs}) == 1 and runs[0][0].endswith("depth@1-32000")

    recipe = tmp_path / "data.yaml"  # responses reads the stand-in images only where the user says
    recipe.write_text(yaml.safe_dump({"data": {"class_path": "resnet_repro.data.FashionMNISTDataModule", "init_args": {
        "data_dir": str(tmp_path / "data"), "download": False, "val_size": 40}}}))
    env["RESPONSES_DATA"] = str(recipe)
    collected = subprocess.run(["bash", str(SCRIPT), "collect", str(out)], capture_output=True, text=True, env=env,
                               timeout=600)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert sorted(path.name for path in (results / "benchmarks").iterdir()) == [
        "gpu-bench.txt", "gpu-check.txt", "gpu-depth.txt", "gpu-determinism.txt", "gpu-memory.txt"]
    table = (results / "fashion-depth-gpu" / "table.md").read_text()
    assert "plain20" in table and "resnet20" in table and "1/32000" in table
    assert any((results / "fashion-depth-gpu-responses").glob("*.png"))
