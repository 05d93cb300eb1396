"""Every system program a test starts is installed by `make test` itself, from one list.

A machine that an earlier run left with Dovecot installed passed while a fresh
one failed; these tests fail instead, on any machine, when a test starts a
program that scripts/test-packages.txt does not name.
"""

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.programs import MissingProgram, packages, program
from tests.support.smtp import free_port
from tests.support.wait import port_open, wait_until

ROOT = Path(__file__).resolve().parents[2]
SPAWNERS = {"run", "Popen", "call", "check_call", "check_output"}


# From Debian's Essential packages, on every machine before anything is installed.
ESSENTIAL = {"bash", "sh", "dpkg", "dpkg-query", "runuser", "kill", "env"}


def _literal_program(node):
    """The program a literal argv (list or tuple) starts with, when it is spelled as a string."""
    if isinstance(node, ast.List | ast.Tuple) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def _argv_nodes(scope):
    """The argv expressions a function (or module) hands to subprocess, following one assignment to a name."""
    calls = [node for node in ast.walk(scope) if isinstance(node, ast.Call) and node.args
             and getattr(node.func, "attr", None) in SPAWNERS]
    argvs = [call.args[0] for call in calls]
    names = {argv.id for argv in argvs if isinstance(argv, ast.Name)}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id in names for t in node.targets):
                argvs.append(node.value)
    for node in ast.walk(scope):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "which" and node.args:
            argvs.append(ast.List(elts=[node.args[0]], lineno=node.lineno))
    return argvs


def spelled_out_programs():
    """(file:line, program) where tests/ starts or looks up a system program by its name instead of program()."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "programs.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]
        for scope in scopes:
            for argv in _argv_nodes(scope):
                name = _literal_program(argv)
                if name and os.path.basename(name) not in ESSENTIAL:
                    found.append((f"{path.relative_to(ROOT)}:{argv.lineno}", name))
    return sorted(set(found))


def test_tests_start_system_programs_only_through_the_package_list():
    spelled = spelled_out_programs()
    assert not spelled, ("start these through tests.support.programs.program(), which checks that "
                         f"scripts/test-packages.txt installs them: {spelled}")


def test_a_program_missing_from_the_list_is_refused_with_what_to_do():
    with pytest.raises(MissingProgram, match="scripts/test-packages.txt does not list"):
        program("true")  # installed everywhere, but no test may rely on it without listing its package


def test_the_test_command_installs_exactly_the_listed_packages():
    listed = subprocess.run(["bash", "-c", "source scripts/common.sh && test_packages"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == list(packages())
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert 'apt_install "${packages[@]}"' in script and "test_packages" in script


def _owner(path):
    for candidate in (path, os.path.realpath(path)):
        result = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.split(":", 1)[0].strip()
    return None


def _dependencies(package, depth=3):
    """The packages ``package`` depends on, a few levels down (postgresql → postgresql-15 → postgresql-client-15)."""
    depends = subprocess.run(["dpkg-query", "-W", "-f", "${Depends}", package], capture_output=True, text=True).stdout
    direct = {alternative.split()[0].split(":")[0] for part in depends.split(",") for alternative in part.split("|")
              if alternative.strip()}
    if depth > 1:
        return direct.union(*(_dependencies(d, depth - 1) for d in direct))
    return direct


@pytest.mark.skipif(not shutil.which("dpkg"), reason="package ownership is checked on Debian")
@pytest.mark.parametrize(("package", "name"), [(pkg, name) for pkg, names in packages().items() for name in names])
def test_each_listed_program_comes_from_its_listed_package(package, name):
    owner = _owner(program(name))
    assert owner == package or owner in _dependencies(package), (
        f"{name} is installed by Debian's {owner}, not by {package} (nor anything {package} depends on)")


def test_the_set_up_stops_a_redis_it_started_and_only_that(redis_client):
    port = free_port()
    script = f"source scripts/common.sh && ensure_redis {port} && ensure_redis 6379 && stop_started_services"
    subprocess.run(["bash", "-c", script], cwd=ROOT, check=True, capture_output=True, timeout=60)
    wait_until(lambda: not port_open(port), timeout=10, message=f"the Redis on {port} to stop")
    assert redis_client.ping()  # the Redis that was already running is left alone


MAIL_PORTS = {25, 110, 143, 465, 587, 993, 995}


def _listening_beyond_loopback():
    """(address, port) of sockets listening on a mail port on any address other than loopback."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) in MAIL_PORTS and address not in ("0100007F", "00000000000000000000000001000000"):
                found.append((address, int(port, 16)))
    return found


def test_the_installed_packages_run_no_public_mail_or_imap_server():
    """Postfix and Dovecot come installed for private test instances, never as the host's own servers."""
    assert _listening_beyond_loopback() == []
