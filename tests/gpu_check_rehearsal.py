"""scripts/gpu-check.sh's CPU rehearsal, for the tests of its two calls (tests/test_gpu_check_*.py): one call of the
GPU check, every step at toy sizes on stand-in Fashion-MNIST, then `collect` of its folder into a results folder,
as the device tool returns each call's $OUT. A file per call, so that the suite's workers rehearse them side by side.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from resnet_repro.data.fashion_mnist import write_standin

from helpers import REPO

SCRIPT = REPO / "scripts" / "gpu-check.sh"


def rehearse(call: str, tmp_path: Path) -> tuple[Path, list[str], subprocess.CompletedProcess]:
    """Runs `gpu-check.sh run CALL --cpu-rehearsal`, checks that every step ended ok and that the figures come last
    in its output, then collects its folder: (its $OUT, its steps' lines, collect's process)."""
    write_standin(tmp_path / "data")
    out = tmp_path / f"out-{call}"
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "PYTHON": sys.executable, "OUT": str(out),
           "RESULTS": str(tmp_path / "results"), "RUNS_ROOT": str(tmp_path / "runs"),
           "RESNET_REPRO": str(Path(sys.executable).parent / "resnet-repro")}
    rehearsal = subprocess.run(["bash", str(SCRIPT), "run", call, "--cpu-rehearsal"], capture_output=True, text=True,
                               env=env, timeout=1200)
    assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr
    # every figure is printed last, so that the device tool's output tail keeps them
    assert "== figures ==" in rehearsal.stdout[-3000:], rehearsal.stdout
    log = (out / f"gpu-check-{call}.log").read_text()
    steps = [line for line in log.splitlines() if re.match(r"(ok|rc \d+|skipped) ", line)]
    assert steps and all(line.startswith("ok ") for line in steps), log

    recipe = tmp_path / "data.yaml"  # responses reads the stand-in images only where the user says
    recipe.write_text(yaml.safe_dump({"data": {"class_path": "resnet_repro.data.FashionMNISTDataModule", "init_args": {
        "data_dir": str(tmp_path / "data"), "download": False, "val_size": 40}}}))
    collected = subprocess.run(["bash", str(SCRIPT), "collect", str(out)], capture_output=True, text=True,
                               env={**env, "RESPONSES_DATA": str(recipe)}, timeout=600)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    return out, steps, collected
