"""docs/openapi.json: the read API's OpenAPI document, as ``converge serve`` serves it.

    python -m engine.api.openapi            # write docs/openapi.json
    python -m engine.api.openapi --check    # exit 1 if it is stale

``tests/test_api.py`` fails when the kept document is not what the app describes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.api.app import make_app

KEPT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def render() -> str:
    """The OpenAPI document, as kept: sorted keys, two-space indent, one final newline."""
    return json.dumps(make_app().openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the kept file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        stale = not KEPT.is_file() or KEPT.read_text(encoding="utf-8") != text
        print(f"{KEPT} is {'stale' if stale else 'current'}")
        return 1 if stale else 0
    KEPT.write_text(text, encoding="utf-8")
    print(f"wrote {KEPT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
