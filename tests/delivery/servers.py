"""Test servers for the send engine: a sink with implicit TLS, a pipelining sink, a loopback DNS server,
an HTTPS server for MTA-STS policies, Postfix's smtp-sink."""

import http.server
import os
import pwd
import re
import signal
import socket
import ssl
import subprocess
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

from tests.support.smtp import Sink, SinkHandler
from tests.support.wait import port_open, wait_until


class Authenticator:
    """Accepts one user and password; records every attempt."""

    def __init__(self, user="herald", password="s3cret-relay-pass"):
        self.user, self.password = user.encode(), password.encode()
        self.attempts = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (self.user, self.password)
        self.attempts.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)


class DroppingHandler(SinkHandler):
    """Like the shared sink's handler, but a dropped connection really closes the socket.

    With ``pipelining`` the server offers ESMTP PIPELINING (RFC 2920), so the
    client's pipelined path is exercised; aiosmtpd reads commands one by one
    from its buffer, which is all pipelining needs from a server.
    """

    pipelining = False

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.sink.sessions.append(server)
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.sink.tls_sessions.append(session.ssl is not None)
        if any(r.lower() in self.sink.rules.drop_after_data for r in envelope.rcpt_tos):
            server.transport.close()
            return "421 4.4.2 connection dropped"
        return await super().handle_DATA(server, session, envelope)


class DroppingSink(Sink):
    def __init__(self, pipelining=False, **kwargs):
        super().__init__(**kwargs)
        self.tls_sessions = []  # per DATA: was the session encrypted?
        self.sessions = []  # the server side of every session, to hang up on
        self.controller.handler = DroppingHandler(self)
        self.controller.handler.pipelining = pipelining

    def hang_up_all(self):
        """Close every open session from the server side, as an idle timeout would."""
        for server in self.sessions:
            if server.transport is not None:
                self.controller.loop.call_soon_threadsafe(server.transport.close)


class _RefusingStartTLS(SMTP):
    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg):
        self.event_handler.sink.starttls_refused += 1
        await self.push("454 4.7.0 TLS not available due to temporary reason")


class RefusingTLSSink(DroppingSink):
    """Offers STARTTLS in its EHLO reply, then answers it 454, as a misconfigured MX does."""

    def __init__(self, tls_context, **kwargs):
        super().__init__(tls_context=tls_context, **kwargs)
        self.starttls_refused = 0
        controller = self.controller
        controller.factory = lambda: _RefusingStartTLS(controller.handler, **controller.SMTP_kwargs)


class PipeliningSink(DroppingSink):
    def __init__(self, **kwargs):
        super().__init__(pipelining=True, **kwargs)


class TLSSink(Sink):
    """The test sink with implicit TLS (SMTPS, RFC 8314) instead of plain SMTP."""

    def __init__(self, ssl_context, **kwargs):
        super().__init__(**kwargs)
        self.controller = _ImplicitTLSController(SinkHandler(self), hostname=self.hostname, port=self.port,
                                                 ssl_context=ssl_context, ready_timeout=10)


class _ImplicitTLSController(Controller):
    def _trigger_server(self):
        # The stock readiness probe speaks plain TCP; do the handshake as a client would.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((self.hostname, self.port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            s.recv(1024)


class DNSServer:
    """A UDP DNS server on loopback answering from a table: {(name, type): [rdata text]}; NXDOMAIN otherwise.

    A value of ``TIMEOUT`` never answers (a resolver that times out); ``SERVFAIL`` answers so.
    """

    TIMEOUT, SERVFAIL = "timeout", "servfail"

    def __init__(self, records, ttl=300):
        self.records = {(n.lower().rstrip("."), t): v for (n, t), v in records.items()}
        self.ttl = ttl
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            q = query.question[0]
            name, rdtype = q.name.to_text().lower().rstrip("."), dns.rdatatype.to_text(q.rdtype)
            self.queries.append((name, rdtype))
            values = self.records.get((name, rdtype))
            if values == self.TIMEOUT:
                continue
            if values == self.SERVFAIL:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif values:
                response.answer.append(dns.rrset.from_text_list(q.name, self.ttl, "IN", rdtype, values))
            elif not any(n == name for n, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


class PolicyServer:
    """An HTTPS server on loopback serving MTA-STS policies: GET /<domain>/mta-sts.txt from ``policies``."""

    def __init__(self, policies, ssl_context):
        self.policies = policies
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                domain = self.path.strip("/").split("/")[0]
                server.requests.append(domain)
                body = server.policies.get(domain)
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url_template(self):
        return f"https://127.0.0.1:{self.port}/{{domain}}/mta-sts.txt"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(2)


class PostfixSink:
    """Postfix's smtp-sink on loopback, counting sessions and messages (-c): a relay that keeps up with the engine,
    where an in-process aiosmtpd sink would be the bottleneck of a test that sends thousands of messages.

    Its counters go to a file, never a pipe: a pipe nobody reads fast enough would stall the sink mid-session.
    """

    def __init__(self):
        import tempfile

        from tests.support.programs import program
        from tests.support.smtp import free_port

        self.port = free_port()
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([program("smtp-sink"), "-c", "-u", pwd.getpwuid(os.getuid()).pw_name,
                                      f"127.0.0.1:{self.port}", "256"],
                                     stdout=self.out, stderr=subprocess.DEVNULL, start_new_session=True)

    def _counters(self):
        size = os.fstat(self.out.fileno()).st_size
        tail = os.pread(self.out.fileno(), 4096, max(0, size - 4096))
        found = re.findall(rb"sess=(\d+) quit=\d+ mesg=(\d+)", tail)
        return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)

    @property
    def sessions(self):
        return self._counters()[0]

    @property
    def messages(self):
        return self._counters()[1]

    def wait_for(self, messages, timeout=30.0):
        wait_until(lambda: self.messages >= messages, timeout=timeout, message=f"smtp-sink to count {messages} messages")

    def __enter__(self):
        wait_until(lambda: port_open(self.port), timeout=10, message="smtp-sink listening")
        return self

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
        self.out.close()
