"""The relay check: connect, negotiate TLS, authenticate, and say exactly what happened."""

from dataclasses import dataclass, field

from delivery.routing import relay_endpoint
from delivery.smtp import Connection, SMTPFailure, Timeouts


@dataclass
class CheckResult:
    ok: bool
    message: str
    steps: list = field(default_factory=list)

    def as_dict(self):
        return {"ok": self.ok, "message": self.message, "steps": self.steps}


def check_relay(relay, timeout=15.0) -> CheckResult:
    """Open one session as the engine would (no message is sent) and report each step."""
    t = Timeouts(connect=timeout, greeting=timeout, command=timeout, data_start=timeout, final_dot=timeout)
    conn = Connection(relay_endpoint(relay), t)
    try:
        conn.open()
    except SMTPFailure as exc:
        return CheckResult(False, str(exc), conn.steps)
    extensions = " ".join(sorted(conn.extensions)) or "none"
    conn.steps.append(f"server offers: {extensions}")
    conn.close()
    tls = "TLS" if conn.tls else "no TLS"
    auth = f", authenticated as {relay.username}" if relay.username else ""
    return CheckResult(True, f"{relay.host}:{relay.port} accepts mail ({tls}{auth})", conn.steps)
