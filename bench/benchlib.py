"""What the benchmarks share: a free loopback port and a scratch PostgreSQL database."""

import socket


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
