import os
import socket
import time


def wait_until(predicate, timeout=30.0, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def port_open(port, host="127.0.0.1"):
    """True when something accepts connections on host:port."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def process_gone(pid):
    """True when no process has this pid (any more)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
