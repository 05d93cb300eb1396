"""The test Dovecot leaves nothing behind, even when it cannot start."""

import socket

import pytest

from tests.tracking.dovecot import Dovecot


def test_a_dovecot_that_cannot_listen_leaves_no_directory_and_no_process():
    server = Dovecot()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", server.imaps))
        taken.listen()
        with pytest.raises(RuntimeError, match="dovecot exited"):
            server.start()
    assert not server.root.exists()
    assert server.process.poll() is not None
