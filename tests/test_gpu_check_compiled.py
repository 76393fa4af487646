"""The GPU check's second call, rehearsed on the CPU: the compiled bench, then the depth study, whose runs come back
in a tarball of records and weights; collected into the study's report and layer responses."""

import re
import tarfile
from pathlib import Path

import pytest
import torch

from gpu_check_rehearsal import rehearse


@pytest.mark.slow
def test_the_second_call_writes_its_compiled_figures_and_a_depth_study_that_collects_into_a_report(tmp_path):
    out, steps, _ = rehearse("2", tmp_path)
    assert len(steps) == 2 and steps[0].startswith("ok       bench resnet20 default, BN groups of 64")
    assert re.search(r"fit: +[\d,]+ images/s", (out / "gpu-compiled.txt").read_text())
    assert steps[-1].startswith("ok       fashion depth study at 1/32000")
    depth = (out / "gpu-depth.txt").read_text()
    assert re.search(r"the depth study, 4 runs at once: 2 runs, finished, finished", depth), depth
    with tarfile.open(out / "fashion-depth-gpu.tar.gz") as tar:  # <experiment>@1-32000/<run>/
        names = tar.getnames()
        runs = sorted(Path(name).parts[-3:-1] for name in names if name.endswith("/summary.json"))
        checkpoint = next(name for name in names if name.endswith("last.ckpt"))
        tar.extract(checkpoint, tmp_path / "ckpt", filter="data")
    assert [run for _, run in runs] == ["plain20-s0", "resnet20-s0"]
    assert len({experiment for experiment, _ in runs}) == 1 and runs[0][0].endswith("depth@1-32000")
    # weights only: what report and responses read, not the optimizer's momentum
    state = torch.load(tmp_path / "ckpt" / checkpoint, map_location="cpu", weights_only=True)
    assert "state_dict" in state and "optimizer_states" not in state

    results = tmp_path / "results"
    assert sorted(path.name for path in (results / "benchmarks").iterdir()) == [
        "gpu-check-2.txt", "gpu-compiled.txt", "gpu-depth.txt"]
    table = (results / "fashion-depth-gpu" / "table.md").read_text()
    assert "plain20" in table and "resnet20" in table and "1/32000" in table
    assert any((results / "fashion-depth-gpu-responses").glob("*.png"))
