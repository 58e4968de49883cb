"""This plugin's one test: the Converge conformance kit, against ``line`` and its simulator.

``-p engine.conformance`` (in ``pyproject.toml``) provides the kit's options and
fixtures; the class below runs every check of the kit. The same checks run with
``pytest -p engine.conformance --converge-protocol line`` from any folder.
"""

from __future__ import annotations

from engine.conformance import ConformanceChecks


class TestLineConformance(ConformanceChecks):
    protocol = "line"
