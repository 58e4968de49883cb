"""Shared test set-up: the test kit, and the services `make test` started."""

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["engine.testkit", "evidence_kit", "retention_kit"]

_SERVICES = Path(__file__).with_name(".services.env")
if _SERVICES.is_file():
    for line in _SERVICES.read_text().splitlines():
        name, _, value = line.partition("=")
        if name:
            os.environ.setdefault(name, value)

# The tests run on busy machines (CI's 2 cores, a neighbour's suite): a per-example time
# limit would measure the machine, not the code. Speed has its benchmarks (bench/).
settings.register_profile("converge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("converge")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The SQLAlchemy URL of the test PostgreSQL server (``bash tests/services.sh start``).

    Without one the test is skipped on a developer's machine, but fails in CI
    (``CI`` set): there a missing service is a defect, not a reason to skip.
    """
    url = os.environ.get("CONVERGE_POSTGRES_URL")
    if not url:
        reason = (
            "no PostgreSQL for the tests: CONVERGE_POSTGRES_URL is unset "
            "(run bash tests/services.sh start, or make test)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; in CI the service must be there")
        pytest.skip(reason)
    return url


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped after the test."""
    import sqlalchemy as sa  # only the tests that use PostgreSQL need it

    name = f"converge_t_{secrets.token_hex(8)}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
