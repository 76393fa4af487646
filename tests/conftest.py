"""pytest's hooks and fixtures; what the tests share besides is in helpers.py."""

from pathlib import Path

import pytest

from helpers import write_cifar10

# The files that take longest first: make test's workers take whole files in this order
# (--dist loadfile --no-loadscope-reorder), so that no worker starts a long file while the other is nearly done.
LONGEST_FIRST = ["test_training.py", "test_hardening.py", "test_gpu_check_compiled.py", "test_gpu_check_eager.py",
                 "test_smoke.py", "test_ranks.py", "test_hostile.py", "test_experiments.py", "test_parallel.py",
                 "test_speed.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: each file keeps its own order


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    write_cifar10(tmp_path / "data")
    return tmp_path / "data"
