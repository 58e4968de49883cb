"""The services `make test` starts are there and usable (tests/services.sh)."""

from __future__ import annotations

import sqlalchemy as sa


def test_a_fresh_postgres_database_answers(fresh_postgres_url: str) -> None:
    engine = sa.create_engine(fresh_postgres_url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        version = connection.execute(sa.text("select version()")).scalar_one()
        database = connection.execute(sa.text("select current_database()")).scalar_one()
    engine.dispose()
    assert str(version).startswith("PostgreSQL")
    assert database.startswith("converge_t_")
