"""A private Postfix instance that relays through Herald with SASL, for tests.

It lives entirely in a temporary directory (its own main.cf, master.cf, queue
and data directories), listens only on loopback, and is stopped at the end.
"""

import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

from tests.support.programs import program
from tests.support.wait import process_gone, wait_until

MASTER_CF = """\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PrivatePostfix:
    def __init__(self, relay_port: int, smtpd_port: int, username: str, secret: str):
        # Postfix's daemons run as the postfix user: every directory above the
        # queue must be searchable by it, which pytest's private tmp is not.
        self.dir = Path(tempfile.mkdtemp(prefix="herald-postfix-"))
        self.dir.chmod(0o755)
        self.smtpd_port = smtpd_port
        (self.dir / "queue").mkdir()
        (self.dir / "data").mkdir()
        shutil.chown(self.dir / "data", "postfix", "postfix")  # master refuses a data directory it does not own
        (self.dir / "sasl_passwd").write_text(f"[127.0.0.1]:{relay_port} {username}:{secret}\n")
        (self.dir / "sasl_passwd").chmod(0o600)
        (self.dir / "main.cf").write_text(textwrap.dedent(f"""\
            compatibility_level = 3.6
            queue_directory = {self.dir}/queue
            data_directory = {self.dir}/data
            mail_owner = postfix
            setgid_group = postdrop
            myhostname = postfix-client.herald.test
            mydomain = herald.test
            myorigin = $myhostname
            mydestination =
            inet_interfaces = loopback-only
            inet_protocols = ipv4
            mynetworks = 127.0.0.0/8
            relayhost = [127.0.0.1]:{relay_port}
            smtp_sasl_auth_enable = yes
            smtp_sasl_password_maps = texthash:{self.dir}/sasl_passwd
            smtp_sasl_security_options = noanonymous
            smtp_sasl_mechanism_filter = plain, login
            smtp_tls_security_level = encrypt
            smtp_tls_loglevel = 1
            smtputf8_enable = no
            maillog_file_prefixes = {self.dir}
            maillog_file = {self.dir}/maillog
            alias_maps =
            alias_database =
            local_recipient_maps =
            smtpd_relay_restrictions = permit_mynetworks, reject
            queue_run_delay = 1s
            minimal_backoff_time = 1s
            maximal_backoff_time = 2s
            """))
        (self.dir / "master.cf").write_text(MASTER_CF.format(smtpd_port=smtpd_port))

    def postfix(self, *args):
        return subprocess.run([program("postfix"), "-c", str(self.dir), *args], capture_output=True, text=True, timeout=60)

    def start(self):
        result = self.postfix("start")
        if result.returncode != 0:
            raise AssertionError(f"postfix did not start: {result.stdout}{result.stderr}{self.log()}")
        return self

    def stop(self):
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        pid = int(pid_file.read_text().strip()) if pid_file.exists() else None
        self.postfix("stop")
        # master exits asynchronously; wait until its process is gone.
        if pid:
            wait_until(lambda: process_gone(pid), timeout=20, interval=0.1, message="postfix's master to exit")
        shutil.rmtree(self.dir, ignore_errors=True)

    def sendmail(self, sender: str, recipients: list[str], message: bytes):
        return subprocess.run([program("sendmail"), "-C", str(self.dir), "-f", sender, "-i", *recipients],
                              input=message, capture_output=True, timeout=60)

    def log(self) -> str:
        path = self.dir / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""
