"""Orbit's Alembic migrations: ``orbit migrate`` (app.database.migrate) runs them from here, in a
checkout as in an installed Orbit; ``alembic upgrade head`` in a checkout reads alembic.ini."""
