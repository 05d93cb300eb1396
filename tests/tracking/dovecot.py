"""A real IMAP/POP3 server for tests: a private Dovecot on loopback with TLS and a passwd-file user."""

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

from tests.support.programs import program
from tests.support.smtp import free_port
from tests.support.wait import port_open, wait_until

CONF = """
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = required
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
mail_uid = nobody
mail_gid = nogroup
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
"""


class Dovecot:
    user = "bounces"
    password = "s3cret-box"

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="herald-dovecot-"))
        self.root.chmod(0o755)
        self.imaps, self.pop3s, self.imap = free_port(), free_port(), free_port()
        self.process = None

    @property
    def cafile(self):
        return str(self.root / "cert.pem")

    def url(self, scheme="imaps", folder=""):
        port = {"imaps": self.imaps, "pop3s": self.pop3s}.get(scheme, self.imap)
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{port}/{folder}"

    def start(self):
        try:
            return self._start()
        except BaseException:
            self.stop()  # a server that never came up leaves no process and no directory behind
            raise

    def _start(self):
        subprocess.run(
            [program("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(self.root / "key.pem"), "-out", self.cafile],
            check=True, capture_output=True,
        )
        (self.root / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n")
        (self.root / "mail").mkdir()
        nobody = pwd.getpwnam("nobody")
        os.chown(self.root / "mail", nobody.pw_uid, nobody.pw_gid)
        conf = self.root / "dovecot.conf"
        conf.write_text(CONF.format(root=self.root, imaps=self.imaps, pop3s=self.pop3s, imap=self.imap))
        self.process = subprocess.Popen([program("dovecot"), "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)

        def listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.process.stderr.read().decode()} {self.log()}")
            # Dovecot's own greeting on IMAPS, not merely an open port: another socket may hold the port.
            return self._greets() and port_open(self.pop3s)

        wait_until(listening, timeout=20, interval=0.1, message="dovecot to listen")
        return self

    def _greets(self):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with socket.create_connection(("127.0.0.1", self.imaps), timeout=1) as raw, \
                    context.wrap_socket(raw) as tls:
                return tls.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def log(self):
        path = self.root / "dovecot.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)
