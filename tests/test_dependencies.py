"""The declared dependency floors, each pinned by `make test-lowest`, and the private names of Lightning that
the fit relies on."""

import importlib.metadata

import pytest

from resnet_repro import dependencies
from resnet_repro.cli import main
from resnet_repro.dependencies import declared_requirements, lowest_pins


def test_every_requirement_has_a_floor_and_test_lowest_pins_each_at_it():
    pins = lowest_pins("dev")
    assert len(pins) == len(declared_requirements("dev")) > len(declared_requirements())
    assert "lightning==2.6" in pins and "jsonargparse[signatures]==4.51" in pins and "pytest==8" in pins


def test_an_installed_wheel_reads_its_own_metadata_without_its_extras(monkeypatch, tmp_path):
    monkeypatch.setattr(dependencies, "PYPROJECT", tmp_path / "pyproject.toml")  # a wheel's site-packages has none
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: {"resnet-repro": [
        "lightning<3,>=2.6", "pytest<10,>=8; extra == \"dev\""]}[name])
    assert [str(r) for r in declared_requirements()] == ["lightning<3,>=2.6"]
    assert lowest_pins("dev") == ["lightning==2.6", "pytest==8"]


def pretend_installed(monkeypatch, installed: dict[str, str | None]) -> None:
    """importlib.metadata.version as in an environment with these versions (None: not installed), the rest real."""
    real = importlib.metadata.version

    def version(name):
        if name not in installed:
            return real(name)
        if installed[name] is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(importlib.metadata, "version", version)


@pytest.mark.parametrize("installed, line", [
    ({"lightning": "2.5.5"}, "resnet-repro needs lightning >=2.6, <3, and 2.5.5 is installed: "
                             "pip install 'lightning<3,>=2.6'"),
    ({"torch": "3.0.0"}, "resnet-repro needs torch >=2.11, <3, and 3.0.0 is installed: pip install 'torch<3,>=2.11'"),
    ({"jsonargparse": "4.27.7"}, "resnet-repro needs jsonargparse >=4.51, <5, and 4.27.7 is installed: "
                                 "pip install 'jsonargparse[signatures]<5,>=4.51'"),
])
def test_a_version_outside_a_declared_range_ends_a_command_in_one_line_before_it_starts(monkeypatch, installed, line):
    pretend_installed(monkeypatch, installed)
    with pytest.raises(SystemExit) as exit_:
        main(["models"])
    assert exit_.value.code == line


def test_a_missing_wandb_is_left_to_the_run_which_logs_to_csv_only(monkeypatch):
    pretend_installed(monkeypatch, {"wandb": None})  # as on a machine without W&B
    assert dependencies.unmet_requirement() is None


def test_this_environment_meets_every_declared_range():
    assert dependencies.unmet_requirement() is None


def test_the_lightning_internals_the_fit_relies_on_are_there_or_named_with_the_version(monkeypatch):
    import lightning
    from lightning.pytorch.cli import LightningCLI

    from resnet_repro.lightning_internals import missing_internals

    assert missing_internals() == []
    # an upgrade that renames one: the line names Lightning's version, the name and what it was used for
    monkeypatch.delattr(LightningCLI, "_parse_ckpt_path")
    monkeypatch.setattr(lightning, "__version__", "9.0.0")
    assert missing_internals() == ["lightning 9.0.0 has no LightningCLI._parse_ckpt_path() (used where train.RunCLI "
                                   "checks a given checkpoint before LightningCLI reads the model's settings from it)"]
