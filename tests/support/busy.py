"""A receiving server that says "421 slow down" and hangs up: after a few messages per connection, or above a rate.

Like FaultRelay, an asyncio SMTP server on loopback in a thread of its own,
speaking PIPELINING. It counts what a person watching its log would count:
connections, the 421s it gave and the messages it accepted (with the peer of
each session and the time).
"""

import asyncio
import threading
import time
from collections import Counter

from tests.support.smtp import free_port

SLOW_DOWN = b"421 4.7.0 Too many messages in this session, slow down\r\n"


class BusyServer:
    def __init__(self, per_connection=0, at="mail", reply_delay=0.0, per_second=0):
        self.port = free_port()
        self.per_connection = per_connection  # 0: no limit
        self.per_second = per_second  # over all connections; 0: no limit
        self.at = at  # where the 421 comes: "mail" (the session) or "dot" (after a message's data)
        self.reply_delay = reply_delay
        self.received = []  # (recipient, time)
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.throttled = 0
        self._lock = threading.Lock()
        self._loop = None
        self._writers = set()

    def recipients(self):
        with self._lock:
            return [r for r, _ in self.received]

    def counts(self):
        return Counter(self.recipients())

    def _opened(self, delta):
        with self._lock:
            self.open += delta
            self.connections += max(delta, 0)
            self.most_open = max(self.most_open, self.open)

    def _session_full(self, accepted):
        return bool(self.per_connection) and accepted >= self.per_connection

    def _too_fast(self):
        if not self.per_second:
            return False
        since = time.time() - 1.0
        with self._lock:
            recent = sum(1 for _, t in self.received[-self.per_second:] if t > since)
        return recent >= self.per_second

    def _slow_down(self, writer):
        with self._lock:
            self.throttled += 1
        writer.write(SLOW_DOWN)

    async def _session(self, reader, writer):
        self._opened(1)
        self._writers.add(writer)
        accepted, rcpt = 0, ""
        try:
            writer.write(b"220 busy.test ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-busy.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    if self.at == "mail" and (self._session_full(accepted) or self._too_fast()):
                        self._slow_down(writer)
                        return
                    writer.write(b"250 2.1.0 OK\r\n")
                elif verb in (b"RSET", b"NOOP"):
                    writer.write(b"250 2.0.0 OK\r\n")
                elif verb == b"RCPT":
                    rcpt = line.partition(b":")[2].strip().lstrip(b"<").partition(b">")[0].decode().lower()
                    writer.write(b"250 2.1.5 OK\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    if self.reply_delay:
                        await asyncio.sleep(self.reply_delay)
                    if self.at == "dot" and (self._session_full(accepted) or self._too_fast()):
                        self._slow_down(writer)
                        return
                    accepted += 1
                    with self._lock:
                        self.received.append((rcpt, time.time()))
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    return
                else:
                    writer.write(b"502 5.5.2 command not implemented\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._opened(-1)
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()
            self._writers.discard(writer)

    def __enter__(self):
        ready = threading.Event()

        async def serve():
            server = await asyncio.start_server(self._session, "127.0.0.1", self.port, backlog=128)
            self._serving = asyncio.current_task()
            ready.set()
            async with server:
                await server.serve_forever()

        def run():
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except asyncio.CancelledError:
                pass
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("busy server did not start")
        return self

    def __exit__(self, *exc):
        def cancel():
            for writer in list(self._writers):
                writer.transport.abort()
            self._serving.cancel()

        self._loop.call_soon_threadsafe(cancel)
        self._thread.join(5)
