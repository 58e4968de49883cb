"""The services `make test` starts are there and usable (tests/services.sh)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import aiomqtt
import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]


def test_a_fresh_postgres_database_answers(fresh_postgres_url: str) -> None:
    engine = sa.create_engine(fresh_postgres_url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        version = connection.execute(sa.text("select version()")).scalar_one()
        database = connection.execute(sa.text("select current_database()")).scalar_one()
    engine.dispose()
    assert str(version).startswith("PostgreSQL")
    assert database.startswith("converge_t_")


# --- from a clone in a folder only root may enter --------------------------------------------


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def installed() -> bool:
    """PostgreSQL's initdb and Mosquitto, as tests/services.sh looks for them."""
    initdb = any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return initdb and bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())


def services(clone: Path, command: str, ports: list[int]) -> subprocess.CompletedProcess[str]:
    names = ("MOSQUITTO_PORT", "MOSQUITTO_TLS_PORT", "POSTGRES_PORT")
    env = {**os.environ, **{name: str(port) for name, port in zip(names, ports, strict=True)}}
    return subprocess.run(
        ["bash", "tests/services.sh", command],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def mqtt_answers(env: dict[str, str]) -> None:
    """Connect to both listeners: the plain one, and TLS with the user and password."""
    async with aiomqtt.Client("127.0.0.1", int(env["CONVERGE_MOSQUITTO"].rsplit(":", 1)[1])):
        pass
    async with aiomqtt.Client(
        "127.0.0.1",
        int(env["CONVERGE_MOSQUITTO_TLS"].rsplit(":", 1)[1]),
        username=env["CONVERGE_MOSQUITTO_USER"],
        password=env["CONVERGE_MOSQUITTO_PASSWORD"],
        tls_params=aiomqtt.TLSParameters(ca_certs=env["CONVERGE_MOSQUITTO_CA"]),
    ):
        pass


def run_folder(clone: Path) -> Path:
    return Path(os.readlink(clone / "tests/.services/run"))


def test_services_run_from_a_clone_in_a_folder_only_root_may_enter(tmp_path: Path) -> None:
    """As root the servers run as the users postgres and mosquitto, who cannot enter /root or
    a `mktemp -d` folder: their files must be elsewhere, and gone after `stop`. A `start`
    over the servers and files of a run that was never stopped (interrupted) ends and
    deletes them first."""
    if os.geteuid() != 0:
        pytest.skip("only as root do the services run as other users (postgres, mosquitto)")
    if not installed():
        pytest.skip("PostgreSQL and Mosquitto are not installed (services.sh installs them)")
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("no git checkout to clone")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    clone = private / "converge"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    ports = free_ports(3)
    started = services(clone, "start", ports)
    runs = [run_folder(clone)] if started.returncode == 0 else []
    try:
        assert started.returncode == 0, started.stderr
        started = services(clone, "start", ports)  # as after a run that was interrupted
        assert started.returncode == 0, started.stderr
        runs.append(run_folder(clone))
        assert not runs[0].exists() and runs[1].is_dir()
        lines = (clone / "tests/.services.env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines)
        engine = sa.create_engine(env["CONVERGE_POSTGRES_URL"], poolclass=sa.NullPool)
        with engine.connect() as connection:
            assert connection.execute(sa.text("select current_user")).scalar_one() == "converge"
        engine.dispose()
        asyncio.run(mqtt_answers(env))
    finally:
        stopped = services(clone, "stop", ports)
    assert stopped.returncode == 0, stopped.stderr
    assert len(runs) == 2 and not runs[1].exists()
    assert not (clone / "tests/.services").exists()
    assert not (clone / "tests/.services.env").exists()
    assert not [port for port in ports if listening(port)]
