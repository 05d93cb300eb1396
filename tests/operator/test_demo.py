"""The one-command demo, run end to end: its summary adds up, a second run prints the same, recipients'
opens, clicks and unsubscribes reach the statistics, the inbox can be read, and Ctrl-C ends it cleanly.

It runs here with DATABASE_URL on a scratch PostgreSQL database; the engine on
the demo's SQLite default is tested in tests/delivery/test_sqlite_engine.py. On SQLite the demo
sends at its domains' full limits, where the sink's per-second peak can come
out a message or two above limit + burst from arrival jitter, which the exact
bound below would not tolerate.
"""

import email
import json
import os
import re
import signal
import subprocess
import sys
from email import policy
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.conf import settings

from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONTACTS = 600
# What the demo's five domains allow together: each limit plus its burst (scripts/demo_campaign.py DOMAINS).
MOST_PER_SECOND = 410 + 82

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scratch_database():
    """A database of the demo's own, next to the test database: new for the first test here, which sees the
    demo start from nothing; the later ones run the demo again on it, as its second run does, which spares
    migrating a new database each time."""
    main = settings.DATABASES["default"]
    if "postgresql" not in main["ENGINE"]:
        pytest.skip("this test runs the demo on a scratch PostgreSQL database")
    name = f"{main['NAME']}_demo"
    url = f"postgres://{main['USER']}:{main['PASSWORD']}@{main['HOST'] or '127.0.0.1'}:{main['PORT'] or 5432}/{name}"
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def demo_env(scratch_database):
    # No REDIS_URL: the demo starts a private Redis of its own, as for someone
    # who runs it on a fresh machine (and no other test's process can write there).
    env = {**os.environ, "DATABASE_URL": scratch_database}
    for name in ("HERALD_DEMO_SERVE", "REDIS_URL"):
        env.pop(name, None)
    return env


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(var_dir):
    """Processes still running that the demo started: every one of them has HERALD_VAR_DIR set to var_dir."""
    mark = f"HERALD_VAR_DIR={var_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def run_demo(env, var_dir):
    result = subprocess.run(
        [sys.executable, "scripts/demo_campaign.py", "--contacts", str(CONTACTS), "--var-dir", str(var_dir),
         "--port", str(free_port()), "--timeout", "240", "--no-serve"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads((var_dir / "summary.json").read_text())


# What changes from one run to the next: how long things took, and the busiest second.
TIMINGS = ("seconds", "per_second", "pids")


def without_timings(summary):
    summary = {key: value for key, value in summary.items() if key not in TIMINGS}
    summary["played"] = {key: value for key, value in summary["played"].items() if key != "seconds"}
    summary["domains"] = {domain: {k: v for k, v in d.items() if k != "peak"} for domain, d in summary["domains"].items()}
    return summary


def printed_summary(out):
    """The summary as printed, with its timings (durations, rates, peaks) blanked."""
    block = out[out.index("\nSummary\n"):out.index("Stopped ")]
    block = re.sub(r"\d+(\.\d+)? s\b", "_ s", block)
    block = re.sub(r"(messages per second +)[\d.]+", r"\1_", block)
    # The busiest-second column is right-aligned: blank its padding with it.
    return re.sub(r"^( {4}\S+\.\w+) +\d+", r"\1 _", block, flags=re.MULTILINE)


@pytest.mark.timeout(900)
def test_the_demo_sends_plays_its_recipients_and_a_second_run_prints_the_same(tmp_path, demo_env):
    out, summary = run_demo(demo_env, tmp_path)
    for line in ("Summary", "as the statistics page shows them", "Delivered", "Bounced after delivery",
                 "deferred at least once", "opened", "clicked", "unsubscribed", "messages per second",
                 "busiest second per domain", "inbox"):
        assert line in out, out

    # Numbers a reader of the summary can check against the generated contacts:
    # 3 in 20 at the deferring domain, 3 in 20 at the rejecting one (a tenth
    # unknown, a tenth moved away), one in 400 suppressed beforehand.
    assert summary["status"] == "finished"
    assert summary["contacts"] == CONTACTS
    assert summary["suppressed_before"] == CONTACTS // 400
    assert summary["sent"] + summary["bounced"] + summary["failed"] == summary["recipients"]
    # The outcomes are the statistics page's partition: each recipient once, 100 % in all.
    assert sum(line["count"] for line in summary["outcomes"].values()) == summary["recipients"]
    assert round(sum(line["rate"] for line in summary["outcomes"].values()), 6) == 1
    assert summary["delivered"] + summary["late_bounces"] == summary["sent"]
    assert summary["deferred_at_least_once"] >= summary["deferred_then_delivered"]
    # Nothing fails outright: every recipient is sent, bounced at RCPT, or
    # delivered after its deferral.
    assert summary["failed"] == 0, summary["failed_reply"]
    rejecting = CONTACTS * 3 // 20
    assert summary["bounced"] == rejecting // 10
    assert summary["deferred_then_delivered"] == CONTACTS * 3 // 20
    assert summary["late_bounces"] == rejecting // 10
    assert summary["per_second"] > 0

    # The recipients' opens, clicks and unsubscribes are in the statistics, exactly as played.
    played = summary["played"]
    assert played["errors"] == [] and played["not_played"] == 0
    assert summary["machine_opens"] == played["proxy_opens"] > 0
    assert summary["human_opens"] == played["people_opened"] > 0
    assert summary["pixel_fetches"] == played["pixel_fetches"] > summary["human_opens"] + summary["machine_opens"]
    assert summary["clicked"] == played["clicked"] > 0
    assert summary["one_click_unsubscribes"] == played["one_click_unsubscribes"] > 0
    assert summary["page_unsubscribes"] == played["page_unsubscribes"] > 0
    assert summary["unsubscribes"] == played["one_click_unsubscribes"] + played["page_unsubscribes"]
    assert summary["suppressed_now"] == (summary["bounced"] + summary["late_bounces"]
                                         + played["page_unsubscribes_from_all"])
    # ... and they went through the web server's real /t/ URLs: its access log has each request.
    access = (tmp_path / "logs" / "web.log").read_text()
    assert len(re.findall(r'"GET /t/o/\S+\.gif HTTP/1\.1" 200', access)) == played["pixel_fetches"]
    assert len(re.findall(r'"GET /t/c/\S+ HTTP/1\.1" 302', access)) == played["clicked"]
    assert len(re.findall(r'"POST /t/u/\S+ HTTP/1\.1" 200', access)) == summary["unsubscribes"]

    # The words and the numbers agree: no domain saw more in one second than its limit plus its burst.
    for domain, seen in summary["domains"].items():
        assert seen["ceiling"] == seen["limit"] + seen["burst"]
        assert 0 < seen["peak"] <= seen["ceiling"] and seen["within"], domain
        assert f"limit {seen['limit']}/s with a burst of {seen['burst']}: at most {seen['ceiling']}, within" in out
    assert "limit N/s with a burst of B: at most N+B in any one second" in out
    assert "domain limits add up to 410/s" in out

    # The progress line: never 100 % while anything is deferred or queued, and a rate the limits allow.
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert progress
    for line in progress:
        deferred, queued = re.search(r"\((\d+) deferred\).* queued (\d+)", line).groups()
        if "100.0%" in line:
            assert deferred == queued == "0", line
        rate = re.search(r"(\d+)/s \(last", line)
        assert rate is None or int(rate.group(1)) <= MOST_PER_SECOND, line
    assert "100.0%" in progress[-1]

    # The inbox: the test send and the first reader of each domain, as .eml and as decoded text.
    kept = {Path(m["txt"]).parent.name for m in summary["inbox"]}
    assert kept == {"you@example.com", "reader00000@example.com", "reader00008@mail.example.co",
                    "reader00012@slow.example.net", "reader00014@defer.example.org", "reader00017@reject.example.io"}
    for message in summary["inbox"]:
        assert str(Path(message["txt"]).relative_to(tmp_path)) in out
        parsed = email.message_from_bytes(Path(message["eml"]).read_bytes(), policy=policy.default)
        assert parsed.get_content_type() == "multipart/alternative"
        assert parsed["Delivered-To"] == message["to"]
        text = Path(message["txt"]).read_text()
        assert "Subject: Hello " in text and ", the spring news is here" in text
        assert "part 1 of 2: text/plain" in text and "part 2 of 2: text/html" in text
        # Decoded: no quoted-printable left, links whole.
        assert "=3D" not in text
        assert re.search(r'<a href="http://127\.0\.0\.1:\d+/t/c/\S+">Read the whole story</a>', text)
        assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in text

    # Every process it started is gone.
    assert set(summary["pids"]) >= {"worker", "beat", "bounce-server", "web"}
    assert not leftovers(tmp_path)

    # A second run starts afresh and prints the same summary, timings apart.
    again_out, again = run_demo(demo_env, tmp_path)
    assert f"{CONTACTS} created, 0 updated" in again_out
    assert without_timings(again) == without_timings(summary)
    assert printed_summary(again_out) == printed_summary(out)
    assert not leftovers(tmp_path)


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("moment", "contacts"), [("Sending “", 600), ("Ctrl-C stops", 40)],
                         ids=["while sending", "while serving the admin"])
def test_ctrl_c_ends_the_demo_with_status_0_and_stops_everything(tmp_path, demo_env, moment, contacts):
    var_dir = tmp_path / "var"
    output = tmp_path / "demo.out"
    with output.open("w") as out:
        demo = subprocess.Popen(
            ["bash", "scripts/demo.sh", "--contacts", str(contacts), "--var-dir", str(var_dir),
             "--port", str(free_port())],
            cwd=ROOT, env=demo_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until(lambda: moment in output.read_text() or demo.poll() is not None, timeout=240,
                   message=f"the demo to print {moment!r}")
        assert demo.poll() is None, output.read_text()[-3000:]
        assert leftovers(var_dir)
        # What the terminal does on Ctrl-C: SIGINT to the foreground process group.
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(120) == 0, output.read_text()[-3000:]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    text = output.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "Stopping…" in text and "process(es) the demo started" in text
    assert not leftovers(var_dir)
