"""A pooled connection carries over no half-finished transaction to its next batch."""

import pytest

from delivery.message import BuiltMessage
from delivery.smtp import Connection, Endpoint
from tests.support.smtp import Rules

from .servers import DroppingSink, PipeliningSink


def message(rcpt):
    data = f"From: a@herald.test\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nhello\r\n".encode()
    return BuiltMessage("bounces@herald.test", rcpt, data, f"{rcpt}-id")


@pytest.mark.parametrize("sink_class", [DroppingSink, PipeliningSink], ids=["sequential", "pipelined"])
def test_batch_ending_in_a_refused_recipient_leaves_the_next_batch_unharmed(sink_class):
    rules = Rules(rcpt={"nobody@herald.test": "550 5.1.1 no such user"})
    with sink_class(rules=rules) as sink:
        conn = Connection(Endpoint("127.0.0.1", sink.port))
        conn.open()
        first, _ = conn.send_many([message("ok1@herald.test"), message("nobody@herald.test")])
        second, _ = conn.send_many([message("ok2@herald.test")])
        conn.close()

    assert [code for _, (code, _) in first] == [250, 550]
    # Without a RSET the next MAIL is refused as "503 nested MAIL command".
    assert [code for _, (code, _) in second] == [250]
    assert sorted(sink.recipients()) == ["ok1@herald.test", "ok2@herald.test"]
