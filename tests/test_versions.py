"""gradio and torch are pinned (==) in requirements.txt at versions past their known advisories
(gradio >= 6.20: file-route and upload fixes; torch >= 2.6: torch.load weights_only by default),
and the installed versions are the pinned ones."""
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
FLOORS = {"gradio": Version("6.20"), "torch": Version("2.6")}


def pins() -> dict[str, Requirement]:
    lines = (line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    requirements = [Requirement(line) for line in lines if line and not line.startswith("-")]
    return {r.name.lower(): r for r in requirements}


@pytest.mark.parametrize("package", FLOORS)
def test_requirements_pin_the_package_exactly_at_a_safe_version(package):
    requirement = pins()[package]
    (specifier,) = requirement.specifier  # one specifier, and it is ==
    assert specifier.operator == "==", f"{package} is not pinned: {requirement}"
    assert Version(specifier.version) >= FLOORS[package]


@pytest.mark.parametrize("package", FLOORS)
def test_the_installed_version_is_safe_and_the_pinned_one(package):
    installed = Version(version(package))
    assert installed >= FLOORS[package]
    assert installed.release == Version(next(iter(pins()[package].specifier)).version).release
