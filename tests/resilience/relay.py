"""A relay whose faults the test turns on: drop after DATA, 421 to everything, stall past the timeouts.

An asyncio SMTP server on loopback (speaking PIPELINING, like Postfix) in a
thread of its own. It logs every message whose final dot it read, with the
time: that log is what "the receiving server saw". A message whose connection
is then dropped or stalled is logged too, since a real server may well have
queued it (RFC 5321 6.1): the sender cannot know, and a retry duplicates it.
"""

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass

from tests.support.smtp import free_port


@dataclass
class Delivery:
    rcpt: str
    at: float
    answered: bool  # False: logged, but the client never got the 250


class FaultRelay:
    def __init__(self, reply_delay=0.0):
        self.port = free_port()
        self.reply_delay = reply_delay
        self.deliveries: list[Delivery] = []
        self.injected: list[str] = []
        self.sessions = 0
        self.drop_next = 0  # close the connection after this many final dots, without replying
        self.refuse_until = 0.0  # 421 to every greeting and command until then (monotonic)
        self.stall_until = 0.0  # no reply to anything until then
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._writers = set()

    # --- faults ----------------------------------------------------------
    def drop_after_data(self, count):
        self.drop_next = count
        self._note(f"drop the connection after DATA for the next {count} message(s)")

    def refuse_for(self, seconds):
        self.refuse_until = time.monotonic() + seconds
        self._note(f"421 to everything for {seconds:g} s")

    def stall_for(self, seconds):
        self.stall_until = time.monotonic() + seconds
        self._note(f"no reply to anything for {seconds:g} s")

    def _note(self, what):
        with self._lock:
            self.injected.append(what)

    # --- what the server saw ---------------------------------------------
    def recipients(self):
        with self._lock:
            return [d.rcpt for d in self.deliveries]

    def counts(self):
        return Counter(self.recipients())

    def unanswered(self):
        with self._lock:
            return sum(1 for d in self.deliveries if not d.answered)

    # --- the server ------------------------------------------------------
    def _refusing(self):
        return time.monotonic() < self.refuse_until

    async def _stall(self):
        while time.monotonic() < self.stall_until:
            await asyncio.sleep(0.05)

    async def _session(self, reader, writer):
        self.sessions += 1
        self._writers.add(writer)
        try:
            if self._refusing():
                writer.write(b"421 4.3.2 Service not available, closing transmission channel\r\n")
                return
            if time.monotonic() < self.stall_until:
                await self._stall()
                return
            writer.write(b"220 fault-relay ESMTP\r\n")
            rcpt = ""
            while True:
                line = await reader.readline()
                if not line:
                    return
                if self._refusing():
                    writer.write(b"421 4.3.2 Service not available, closing transmission channel\r\n")
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-fault-relay\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb in (b"MAIL", b"RSET", b"NOOP"):
                    writer.write(b"250 2.1.0 OK\r\n")
                elif verb == b"RCPT":
                    rcpt = line.partition(b":")[2].strip().lstrip(b"<").partition(b">")[0].decode().lower()
                    writer.write(b"250 2.1.5 OK\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    if self.reply_delay:
                        await asyncio.sleep(self.reply_delay)
                    dropping = stalling = False
                    with self._lock:
                        if self.drop_next > 0:
                            self.drop_next -= 1
                            dropping = True
                        stalling = time.monotonic() < self.stall_until
                        self.deliveries.append(Delivery(rcpt, time.time(), not (dropping or stalling)))
                    if dropping:
                        return
                    if stalling:
                        await self._stall()
                        return
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
            raise RuntimeError("fault relay did not start")
        return self

    def __exit__(self, *exc):
        def cancel():
            # Closing the sockets ends each session on its own; only the listener is cancelled.
            for writer in list(self._writers):
                writer.transport.abort()
            self._serving.cancel()

        self._loop.call_soon_threadsafe(cancel)
        self._thread.join(5)
