"""A Mosquitto broker of a test's own, on a free port, that the test may restart or kill.

The broker `tests/services.sh` starts is shared by every test running at the
same time; a test that restarts its broker, or whose ingesters subscribe to
every site's topics, runs one of its own instead. It persists its sessions
and queues in its folder (saved when it stops cleanly, as Mosquitto does),
so a restart keeps what a real broker restart keeps.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from waiting import wait_until

BINARY = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """``mosquitto`` on ``127.0.0.1:port``, its files in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "max_queued_messages 10000\n"
            f"user {getpass.getuser()}\n"  # as root, keep root: the folder is root's only
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        log = (self.folder / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(
            [BINARY, "-c", str(self.folder / "mosquitto.conf")], stdout=log, stderr=log
        )
        wait_until(lambda: answers(self.port), f"mosquitto listening on {self.port}")

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: it saves its sessions first; SIGKILL: it does not)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(how)
        process.wait(timeout=30)
        wait_until(lambda: not answers(self.port), f"mosquitto gone from {self.port}")

    def restart(self) -> None:
        self.stop()
        self.start()
