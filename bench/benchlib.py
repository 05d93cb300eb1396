"""What the benchmarks share: a SECRET_KEY, a free loopback port and a scratch PostgreSQL database."""

import os
import socket

# Herald refuses to start without SECRET_KEY (unless DEBUG); benchmarks sign
# tokens like production does, with a key of their own unless one is given.
os.environ.setdefault("SECRET_KEY", "herald-benchmarks-only-0c7d1e9a4b2f46e8a3d5c1b7f9e2a4d6")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recreate_database(server_url: str, name: str):
    """Drop and create database ``name`` on the server at ``server_url`` (postgres://user:pass@host:port)."""
    import psycopg

    admin = server_url.replace("postgres://", "postgresql://", 1).rstrip("/") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
