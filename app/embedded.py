"""The embedded PostgreSQL used when ``DATABASE_URL`` is unset.

``pgserver`` runs PostgreSQL from its own wheel in ``DATA_DIR``; every process on the machine that
asks for the same directory shares one server, which stops when the last of them exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

_servers: dict[Path, Any] = {}


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded server in ``data_dir`` and return its URL."""
    pgdata = (data_dir / "pgdata").resolve()
    server = _servers.get(pgdata)
    if server is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            # pgserver warns when XDG_RUNTIME_DIR is unset; its fallback is fine for us.
            warnings.simplefilter("ignore")
            from pgserver import get_server  # type: ignore[attr-defined]

            server = get_server(pgdata)
        _servers[pgdata] = server
    return str(server.get_uri())
