"""Alembic environment: uses the connection handed over by core.db.migrate when present."""

from alembic import context
from sqlalchemy import create_engine

# Import every area's models so that autogenerate (for developers) sees all tables.
import core.corpus.models
import core.datasets.models
import core.db.models
import core.learning.models
import core.ops.models
import core.serving.models
import core.training.models  # noqa: F401
from core.db.base import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        run_migrations(conn)
