"""Private Redis and PostgreSQL servers for the tests that restart them; the shared ones are never touched."""

import os
import shutil
import subprocess
import tempfile

from tests.support.programs import program
from tests.support.smtp import free_port
from tests.support.wait import port_open, wait_until


def _wait_port(port, timeout=30):
    wait_until(lambda: port_open(port), timeout=timeout, message=f"something to listen on 127.0.0.1:{port}")


class PrivateRedis:
    """redis-server on a free loopback port, without persistence: a restart loses every queued task."""

    def __init__(self, directory):
        self.port = free_port()
        self.directory = directory
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [program("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=(self.directory / "redis.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_port(self.port)
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb as the postgres user) on a free loopback port."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="herald-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run([*self.as_postgres, program("initdb"), "-D", self.data, "-U", "herald", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL)

    @property
    def url(self):
        return f"postgres://herald@127.0.0.1:{self.port}/herald"

    def _ctl(self, *args):
        subprocess.run([*self.as_postgres, program("pg_ctl"), "-D", self.data, "-l", self.log, *args], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self):
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._ctl("-o", opts, "-w", "start")
        _wait_port(self.port)
        return self

    def create_database(self):
        subprocess.run([program("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "herald", "herald"],
                       check=True)

    def stop(self):
        self._ctl("-m", "fast", "-w", "stop")

    def destroy(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
