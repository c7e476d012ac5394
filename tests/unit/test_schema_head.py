"""The schema head a worker checks at start, read from the migration scripts' text, is Alembic's."""

from __future__ import annotations

import subprocess
import sys

from alembic.script import ScriptDirectory

from app import database


def test_the_head_read_from_the_scripts_is_alembics() -> None:
    alembics = ScriptDirectory.from_config(database.alembic_config("")).get_current_head()
    assert database._head_revision() == alembics


def test_a_worker_start_imports_no_alembic() -> None:
    """Checking the schema at start needs none of Alembic (70-80 ms of each worker's start)."""
    code = (
        "import sys; import app.worker.command, app.worker.loop; from app import database; "
        "database._head_revision(); print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
