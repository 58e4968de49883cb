"""Shared test set-up: the test kit, and the services `make test` started."""

import os
from pathlib import Path

pytest_plugins = ["engine.testkit"]

_SERVICES = Path(__file__).with_name(".services.env")
if _SERVICES.is_file():
    for line in _SERVICES.read_text().splitlines():
        name, _, value = line.partition("=")
        if name:
            os.environ.setdefault(name, value)
