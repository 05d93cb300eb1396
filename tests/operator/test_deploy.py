"""The production shape: the example env file passes Django's deployment checks; compose runs every role."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def example_env():
    values = {}
    for line in (ROOT / "deploy" / "herald.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def check_deploy(env):
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_example_production_settings_pass_check_deploy():
    env = {**os.environ, **example_env()}
    result = check_deploy(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_names_what_is_missing_with_development_defaults():
    env = {k: v for k, v in os.environ.items() if k not in example_env()}
    result = check_deploy({**env, "DEBUG": "true"})
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W018"):  # HSTS, SSL, cookie, DEBUG
        assert warning in result.stderr + result.stdout


def test_compose_runs_every_role_with_health_checks():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for role in ("postgres", "redis", "web", "worker", "beat", "bounces"):
        assert "healthcheck" in services[role], role
    assert "gunicorn" in services["web"]["command"]
    assert "DatabaseScheduler" in " ".join(services["beat"]["command"])
    assert "run_bounce_server" in services["bounces"]["command"]
    assert services["worker"]["env_file"][0]["path"] == "deploy/herald.env"
