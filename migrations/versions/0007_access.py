"""Access to `orbit serve`: API tokens with roles, and the console's sign-in sessions.

A token's secret is shown once, when it is created, and only its SHA-256 is kept: the secret is
32 random bytes, so a slow password hash would add nothing but time to every API call. A console
session is a random id (kept as its hash too) that stands for one token; revoking the token ends
its sessions with it.

Revision ID: 0007_access
Revises: 0006_run_ids
Create Date: 2026-12-04
"""

from alembic import op

revision = "0007_access"
down_revision = "0006_run_ids"
branch_labels = None
depends_on = None

# Kept in step with app.access.Role (tests/integration/test_migrations.py checks it).
ROLES = "('viewer', 'operator', 'admin')"


def upgrade() -> None:
    op.execute(f"""
        CREATE TABLE api_tokens (
            name          text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{{0,99}}$'),
            role          text        NOT NULL CHECK (role IN {ROLES}),
            secret_hash   text        NOT NULL UNIQUE,
            created_at    timestamptz NOT NULL DEFAULT now(),
            created_by    text        NOT NULL DEFAULT current_user,
            last_used_at  timestamptz
        )
    """)
    op.execute("COMMENT ON TABLE api_tokens IS 'Orbit: who may call orbit serve, as the SHA-256 of a secret'")
    op.execute("""
        CREATE TABLE console_sessions (
            id_hash     text        PRIMARY KEY,
            token_name  text        NOT NULL REFERENCES api_tokens (name) ON DELETE CASCADE,
            csrf        text        NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz NOT NULL
        )
    """)
    op.execute("CREATE INDEX console_sessions_token_idx ON console_sessions (token_name)")
    op.execute("COMMENT ON TABLE console_sessions IS 'Orbit: console sign-ins, each standing for one token'")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS console_sessions")
    op.execute("DROP TABLE IF EXISTS api_tokens")
