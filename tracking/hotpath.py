"""Recording opens and clicks in one round trip each: the code behind the pixel and the redirect.

Shared by the Django views (tracking/views.py) and the WSGI fast path
(tracking/wsgi.py). Each records its Event with a single INSERT … SELECT from
the Send row, so an unknown send records nothing and costs one query.
"""

import base64

from django.db import connection
from django.utils import timezone

from campaigns import rendering
from campaigns.models import CampaignLink, Contact
from delivery import message, submitted
from delivery.models import Send
from tracking.machine import CLICK_BURST_SECONDS, SECONDS_AFTER_SENT, is_machine_agent
from tracking.models import Event

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

_EVENT = Event._meta.db_table
_SEND = Send._meta.db_table
_LINK = CampaignLink._meta.db_table
_COLUMNS = "type, send_id, contact_id, campaign_id, email, created_at, machine, url, link_index, status, diagnostic, " \
           "user_agent, source, raw, key, variant"

_OPEN_SQL = f"""
INSERT INTO {_EVENT} ({_COLUMNS})
SELECT 'open', s.id, s.contact_id, s.campaign_id, s.email, %s, (%s OR s.sent_at IS NULL OR s.sent_at > %s),
       '', NULL, '', '', %s, 'pixel', '', NULL, s.variant
FROM {_SEND} s {{relaxed}} WHERE s.id = %s
RETURNING id
"""  # noqa: S608 (table names come from the models, values are parameters)

# The link must belong to the send's own campaign: the token names an index,
# and only a URL stored for that campaign can be the target.
_CLICK_SQL = f"""
INSERT INTO {_EVENT} ({_COLUMNS})
SELECT 'click', s.id, s.contact_id, s.campaign_id, s.email, %s,
       (%s OR s.sent_at IS NULL OR s.sent_at > %s OR EXISTS (
            SELECT 1 FROM {_EVENT} e WHERE e.send_id = s.id AND e.type = 'click'
            AND e.link_index <> %s AND e.created_at > %s)),
       l.url, l."index", '', '', %s, 'redirect', '', NULL, s.variant
FROM {_SEND} s JOIN {_LINK} l ON l.campaign_id = s.campaign_id AND l."index" = %s AND NOT l.personal {{relaxed}}
WHERE s.id = %s
RETURNING url, machine
"""  # noqa: S608

# A personal link (its URL has expressions) is rendered for the send's contact
# when it is clicked (delivery.message.render_personal_link): its source and
# the contact are read first, and the rendered URL is passed in.
_PERSONAL_LINK_SQL = f"""
SELECT l.url, s.contact_id, s.email FROM {_SEND} s
JOIN {_LINK} l ON l.campaign_id = s.campaign_id AND l."index" = %s AND l.personal
WHERE s.id = %s
"""  # noqa: S608

_PERSONAL_CLICK_SQL = f"""
INSERT INTO {_EVENT} ({_COLUMNS})
SELECT 'click', s.id, s.contact_id, s.campaign_id, s.email, %s,
       (%s OR s.sent_at IS NULL OR s.sent_at > %s OR EXISTS (
            SELECT 1 FROM {_EVENT} e WHERE e.send_id = s.id AND e.type = 'click'
            AND e.link_index <> %s AND e.created_at > %s)),
       %s, %s, '', '', %s, 'redirect', '', NULL, s.variant
FROM {_SEND} s {{relaxed}}
WHERE s.id = %s
RETURNING url, machine
"""  # noqa: S608

# A message submitted over SMTP has no campaign: its links are the ones the
# stored message itself contains (delivery.submitted.link_for), looked up
# in Python and passed in; the Send must be such a message.
_SUBMITTED_CLICK_SQL = f"""
INSERT INTO {_EVENT} ({_COLUMNS})
SELECT 'click', s.id, s.contact_id, s.campaign_id, s.email, %s,
       (%s OR s.sent_at IS NULL OR s.sent_at > %s OR EXISTS (
            SELECT 1 FROM {_EVENT} e WHERE e.send_id = s.id AND e.type = 'click'
            AND e.link_index <> %s AND e.created_at > %s)),
       %s, %s, '', '', %s, 'redirect', '', NULL, s.variant
FROM {_SEND} s {{relaxed}}
WHERE s.id = %s AND s.campaign_id IS NULL AND s.outbound_id IS NOT DISTINCT FROM %s
RETURNING url, machine
"""  # noqa: S608

# An open or a click is worth less than a commit's fsync: on PostgreSQL these
# inserts commit without waiting for the WAL flush (synchronous_commit off for
# this transaction only). A crash may lose the last fraction of a second of
# opens; it can never corrupt or half-write anything.
_RELAXED = {"postgresql": ", (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed"}


def _sql(template):
    return template.format(relaxed=_RELAXED.get(connection.vendor, ""))


_MARK_BURST_SQL = f"""
UPDATE {_EVENT} SET machine = %s WHERE send_id = %s AND type = 'click' AND created_at > %s AND machine = %s
"""  # noqa: S608


def _cursor():
    """A cursor for the hot path: on PostgreSQL one with server-side binding, which psycopg
    prepares after a few executions, so the server stops parsing and planning the INSERT.
    (Prepared statements need a session of their own: behind PgBouncer, use session pooling.)"""
    if connection.vendor == "postgresql":
        import psycopg

        connection.ensure_connection()
        return psycopg.Cursor(connection.connection)
    return connection.cursor()


def record_open(send_id: int, user_agent: str) -> bool:
    """Record an open of a send; False when there is no such send."""
    user_agent = user_agent[:1000]
    now = timezone.now()
    early = now - timezone.timedelta(seconds=SECONDS_AFTER_SENT)
    with _cursor() as cursor:
        cursor.execute(_sql(_OPEN_SQL), [now, is_machine_agent(user_agent), early, user_agent, send_id])
        return cursor.fetchone() is not None


def record_click(send_id: int, index: int, user_agent: str, head: bool = False):
    """Record a click on link ``index`` of a send's campaign (or of its submitted message); its stored URL,
    or None for no such link."""
    user_agent = user_agent[:1000]
    now = timezone.now()
    # Link scanners often send HEAD first; a person's browser never does.
    declared_machine = head or is_machine_agent(user_agent)
    early = now - timezone.timedelta(seconds=SECONDS_AFTER_SENT)
    burst_since = now - timezone.timedelta(seconds=CLICK_BURST_SECONDS)
    with _cursor() as cursor:
        cursor.execute(_sql(_CLICK_SQL), [now, declared_machine, early, index, burst_since, user_agent, index, send_id])
        row = cursor.fetchone()
        if row is None:
            row = _record_personal_click(cursor, send_id, index, [now, declared_machine, early, index, burst_since],
                                         user_agent)
        if row is None:
            row = _record_submitted_click(cursor, send_id, index, [now, declared_machine, early, index, burst_since],
                                          user_agent)
        if row is None:
            return None
        url, machine = row
        if machine and not declared_machine:
            # The clicks just before this one were the same scanner walking the links.
            cursor.execute(_MARK_BURST_SQL, [True, send_id, burst_since, False])
    return url


def _record_personal_click(cursor, send_id: int, index: int, head_params: list, user_agent: str):
    """Record a click on personal link ``index`` of a send's campaign; (url, machine) or None.

    The URL follows the contact's data as it is now; a link that no longer
    renders a web address is refused (None) and records nothing.
    """
    cursor.execute(_PERSONAL_LINK_SQL, [index, send_id])
    row = cursor.fetchone()
    if row is None:
        return None
    source, contact_id, email = row
    contact = Contact.objects.filter(pk=contact_id).first() if contact_id is not None else None
    data = rendering.ContactData.of(contact) if contact is not None else rendering.ContactData(email)
    url = message.render_personal_link(source, send_id, data)[1]
    if url is None:
        return None
    cursor.execute(_sql(_PERSONAL_CLICK_SQL), [*head_params, url, index, user_agent, send_id])
    return cursor.fetchone()


def _record_submitted_click(cursor, send_id: int, index: int, head_params: list, user_agent: str):
    """Record a click on link ``index`` of a message submitted over SMTP (or composed by an app: no outbound id);
    (url, machine) or None.

    Only reached when the campaign look-up found nothing: a campaign send with an
    index its campaign lacks costs this one extra query and records nothing.
    """
    found = Send.objects.filter(pk=send_id, campaign__isnull=True).values_list("outbound_id", flat=True)[:1]
    if not found:
        return None
    outbound_id = found[0]
    url = submitted.link_for(Send(pk=send_id, outbound_id=outbound_id), index)
    if url is None:
        return None
    cursor.execute(_sql(_SUBMITTED_CLICK_SQL), [*head_params, url, index, user_agent, send_id, outbound_id])
    return cursor.fetchone()
