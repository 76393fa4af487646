"""The versions of its dependencies that this project declares.

pyproject.toml's requirements are the one home of the floors: read there in a checkout (an editable install, or
the package on PYTHONPATH), and from the installed distribution's metadata (pyproject's own copy) otherwise. Each
floor is a version that `make test-lowest` installs and tests.
"""

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

DISTRIBUTION = "resnet-repro"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def declared_requirements(extra: str | None = None) -> list[Requirement]:
    """The requirements of the project (and of one of its extras, e.g. "dev"), as pyproject.toml declares them."""
    project = tomllib.loads(PYPROJECT.read_text()).get("project", {}) if PYPROJECT.is_file() else {}
    if project.get("name") == DISTRIBUTION:  # a checkout: its pyproject.toml, whatever was installed from it
        lines = [*project["dependencies"], *project.get("optional-dependencies", {}).get(extra, [])]
        return [Requirement(line) for line in lines]
    requirements = [Requirement(line) for line in importlib.metadata.requires(DISTRIBUTION) or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": extra or ""})]


def floor(requirement: Requirement) -> Version:
    """The lowest version a requirement allows: every one of this project's has a floor (`>=`)."""
    floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    if not floors:
        raise ValueError(f"pyproject.toml: {requirement} has no floor (>=): give it the lowest version tested")
    return max(floors)


def lowest_pins(extra: str | None = None) -> list[str]:
    """Each requirement pinned at its floor, for pip: what `make test-lowest` installs."""
    return [f"{r.name}{extras(r)}=={floor(r)}" for r in declared_requirements(extra)]


def extras(requirement: Requirement) -> str:
    return f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""


def unmet_requirement() -> str | None:
    """The first declared requirement whose installed version is outside its range, as one line naming the package,
    the version found and the one needed (None when all are met): resnet-repro checks it before a command imports
    anything, so that an old Lightning is not met later as a traceback about an option it lacks. A package that is
    not installed at all is left to its import, which names it: W&B may be missing (a run then logs to CSV only)."""
    for requirement in declared_requirements():
        try:
            found = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(found, prereleases=True):
            return f"resnet-repro needs {requirement.name} {allowed(requirement)}, and {found} is installed: " \
                   f"pip install '{requirement}'"
    return None


def allowed(requirement: Requirement) -> str:
    """The versions a requirement allows, floor first: '>=2.6, <3'."""
    return ", ".join(str(spec) for spec in sorted(requirement.specifier, key=lambda spec: spec.operator != ">="))
