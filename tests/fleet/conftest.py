"""Fixtures for the fleet tests: the real component calibration from ../shared, the shipped
calibration and surrogate."""

from __future__ import annotations

from pathlib import Path

import pytest

from lego_embed.cli.fleet_commands import DEFAULT_CALIBRATION, DEFAULT_SURROGATE
from lego_embed.fleet.calibration import Calibration, calibrate, load_calibration
from lego_embed.fleet.surrogate import Surrogate


@pytest.fixture(scope="session")
def components_path(shared_dir: Path) -> Path:
    path = shared_dir / "adapter_serving" / "components_qwen.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def calibration(components_path: Path) -> Calibration:
    return calibrate(components_path)


@pytest.fixture(scope="session")
def shipped_calibration() -> Calibration:
    return load_calibration(DEFAULT_CALIBRATION)


@pytest.fixture(scope="session")
def surrogate() -> Surrogate:
    return Surrogate.load(DEFAULT_SURROGATE)
