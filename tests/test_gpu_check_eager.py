"""The GPU check's first call, rehearsed on the CPU: the eager benches, the memory bench, the deterministic pair and
runs side by side, each figure in its file; collected alone, as when the second call is lost."""

import re

import pytest

from gpu_check_rehearsal import rehearse


@pytest.mark.slow
def test_the_first_call_writes_its_eager_figures_and_collects_without_the_second(tmp_path):
    out, steps, collected = rehearse("1", tmp_path)
    # two eager benches, the memory bench, two deterministic fits, the runs side by side
    assert len(steps) == 6 and "bench resnet20 eager, BN groups 64" in steps[1]
    bench = (out / "gpu-bench.txt").read_text()
    assert re.search(r"fit: +[\d,]+ images/s", bench) and "BN groups 64" in bench
    profile = r"profile: +[\d,]+ ATen calls per compute step, [\d.,]+ ms busy of its [\d.,]+ ms"
    assert len(re.findall(profile, bench)) == 2
    assert re.search(r"resnet32, batch 8.*\n(.*\n)*\s+fit: .*MiB", (out / "gpu-memory.txt").read_text())
    assert "metrics.csv are identical (3 iterations)" in (out / "gpu-determinism.txt").read_text()
    parallel = (out / "gpu-parallel.txt").read_text()
    assert re.search(r"2 run\(s\) at once: 2 runs, finished, finished; summed train images/s [\d,]+ "
                     r"\([\d,]+ \+ [\d,]+\)", parallel), parallel

    benchmarks = tmp_path / "results" / "benchmarks"
    assert sorted(path.name for path in benchmarks.iterdir()) == [
        "gpu-bench.txt", "gpu-check-1.txt", "gpu-determinism.txt", "gpu-memory.txt", "gpu-parallel.txt"]
    assert "no fashion-depth-gpu.tar.gz: call 2 did not reach the depth study" in collected.stderr
