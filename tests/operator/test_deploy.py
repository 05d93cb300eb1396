"""The production shape: the example env file passes Django's deployment checks; compose runs every role."""

import http.client
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.smtp import free_port
from tests.support.wait import port_open, wait_until

ROOT = Path(__file__).resolve().parents[2]


def example_env():
    values = {}
    for line in (ROOT / "deploy" / "herald.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def filled_in_example_env():
    """The example with each CHANGE-ME value replaced, as its comments ask."""
    return {name: secrets.token_urlsafe(60) if "CHANGE-ME" in value else value for name, value in example_env().items()}


def check_deploy(env):
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_example_production_settings_pass_check_deploy():
    env = {**os.environ, **filled_in_example_env()}
    result = check_deploy(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("change,names", [
    ({"SECRET_KEY": "short-key"}, ["security.W009"]),
    ({"SECRET_KEY": example_env()["SECRET_KEY"]}, ["herald.W101", "SECRET_KEY is still the example's placeholder"]),
    ({"HERALD_ENCRYPTION_KEY": ""}, ["herald.W102", "HERALD_ENCRYPTION_KEY is not set"]),
    ({"HERALD_ENCRYPTION_KEY": example_env()["HERALD_ENCRYPTION_KEY"]}, ["herald.W103"]),
    ({"HERALD_ENCRYPTION_KEY": "new-key-long-enough-0123456789abcdef,short"}, ["herald.W103"]),
    ({"HERALD_TRUSTED_PROXIES": "0.0.0.0/0"}, ["herald.W104", "trusts every address (0.0.0.0/0)"]),
    ({"HERALD_TRUSTED_PROXIES": "10.0.0.1,*"}, ["herald.W104"]),
    ({"HERALD_TRUSTED_PROXIES": "::/0"}, ["herald.W104"]),
    ({"HERALD_TRUSTED_PROXIES": ""}, ["herald.W105", "HERALD_TRUSTED_PROXIES is empty"]),
], ids=["short-secret-key", "example-secret-key", "no-encryption-key", "example-encryption-key",
        "short-encryption-key", "trusts-everyone", "trusts-star", "trusts-every-ipv6", "tls-proxy-trusts-no-one"])
def test_check_deploy_fails_for_each_insecure_setting(change, names):
    result = check_deploy({**os.environ, **filled_in_example_env(), **change})
    assert result.returncode != 0
    for name in names:
        assert name in result.stdout + result.stderr


def test_check_deploy_cannot_even_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    result = check_deploy({**env, **{k: v for k, v in filled_in_example_env().items() if k != "SECRET_KEY"}})
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr and "SECRET_KEY_FILE" in result.stderr


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
    for role in ("postgres", "redis", "web", "worker", "beat", "bounces", "submission"):
        assert "healthcheck" in services[role], role
    assert "gunicorn" in services["web"]["command"]
    assert "DatabaseScheduler" in " ".join(services["beat"]["command"])
    assert "run_bounce_server" in services["bounces"]["command"]
    # Opt-in: it needs a certificate before it can start.
    assert "run_submission_server" in services["submission"]["command"]
    assert services["submission"]["profiles"] == ["submission"]
    assert services["worker"]["env_file"][0]["path"] == "deploy/herald.env"


def test_compose_publishes_web_on_loopback_and_gunicorn_trusts_only_the_configured_proxies():
    yaml = pytest.importorskip("yaml")
    web = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["web"]
    assert web["ports"] == ["127.0.0.1:8000:8000"]
    for command in (web["command"], (ROOT / "Dockerfile").read_text()):
        assert "deploy/gunicorn.conf.py" in str(command)
        assert "forwarded-allow-ips" not in str(command)


@pytest.mark.parametrize("behind_tls_proxy", ["false", "true"])
@pytest.mark.parametrize("trusted,secure", [("", False), ("127.0.0.1", True)], ids=["untrusted", "trusted"])
def test_gunicorn_as_deployed_believes_x_forwarded_proto_only_from_trusted_proxies(tmp_path, behind_tls_proxy, trusted,
                                                                                   secure):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'herald.sqlite3'}", "HERALD_VAR_DIR": str(tmp_path),
           "SECURE_SSL_REDIRECT": "true", "HERALD_BEHIND_TLS_PROXY": behind_tls_proxy, "HERALD_TRUSTED_PROXIES": trusted}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "deploy/gunicorn.conf.py", "herald.wsgi:application",
         "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "gunicorn.log").open("wb"))
    try:
        wait_until(lambda: port_open(port), message="gunicorn")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # the worker loads Django on its first request
        connection.request("GET", "/admin/login/", headers={"X-Forwarded-Proto": "https"})
        response = connection.getresponse()
        connection.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    if secure:
        assert response.status == 200, (tmp_path / "gunicorn.log").read_text()[-2000:]
    else:  # plain HTTP, whatever the header claims: redirected to HTTPS
        assert response.status == 301
        assert response.getheader("Location") == f"https://127.0.0.1:{port}/admin/login/"
