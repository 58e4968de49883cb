"""``make demo`` checks the simulated plant's ports before it starts (issue 15).

With one of them taken, the demo stops at once, before it compiles or
writes anything, naming the port, what the demo wanted it for, and what to
do; it used to run six steps and then end in a traceback at the simulator.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def held(port: int) -> Iterator[None]:
    """Listen on ``port`` of 127.0.0.1 for a while (or leave it to whoever already does)."""
    with socket.socket() as taken:
        with contextlib.suppress(OSError):
            taken.bind(("127.0.0.1", port))
            taken.listen()
        yield


def test_a_busy_port_stops_the_demo_before_it_starts(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with held(5021):
        done = subprocess.run(
            ["bash", str(REPO / "examples" / "demo.sh")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=120,
        )
    assert done.returncode == 1
    assert done.stdout == ""  # not one step ran
    assert "  port 5021 (Modbus/TCP of cleanroom-emu-1) is in use\n" in done.stderr
    assert "Stop what listens there" in done.stderr
