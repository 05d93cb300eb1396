"""The due-steps sweep: advance every enrolment whose next step is due, a claimed batch at a time.

One transaction per batch claims its rows (``FOR UPDATE SKIP LOCKED``, so two
ticks never hold the same enrolment), runs each contact's steps up to the next
wait, writes the email steps' Send rows and the enrolments' new places, and
commits. A worker killed before the commit leaves nothing behind (the next tick
redoes the batch); one killed after it has sent nothing twice, because every
email step's Message carries the unique key (automation, step, contact,
occurrence) and is inserted only where that key is new.
"""

import datetime
import json
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from automations.models import Automation, Enrolment, Message, Step
from automations.triggers import zone_of
from campaigns.models import Contact, Subscription, Suppression, email_key
from delivery import dispatch
from delivery.models import Send
from segments.compiler import Compiler
from tracking.models import Event
from webhooks_out import outbox

BATCH = 2000
# Steps run back to back in one batch before a contact waits (a chain of branches and updates).
MAX_STEPS_PER_TICK = 20


@dataclass
class _Row:
    id: int
    automation_id: int
    contact_id: int
    occurrence: int
    version: int
    position: int
    payload: dict
    due_at: datetime.datetime = None
    status: str = Enrolment.Status.ACTIVE
    reason: str = ""
    moved: bool = False


@dataclass
class _Batch:
    now: datetime.datetime
    contacts: dict = field(default_factory=dict)  # id -> (email, attributes)
    emails: list = field(default_factory=list)  # (row, step)
    entered: dict = field(default_factory=lambda: defaultdict(int))
    exited: dict = field(default_factory=lambda: defaultdict(int))
    steps_run: list = field(default_factory=list)  # (row, step) for the webhook


_steps_cache: dict = {}


def steps_of(automation_id: int, version: int) -> list[Step]:
    """The steps of one version, by position (a version's steps never change once contacts are on it)."""
    key = (automation_id, version)
    steps = _steps_cache.get(key)
    if steps is None:
        steps = list(Step.objects.filter(automation_id=automation_id, version=version)
                     .select_related("template").order_by("position", "pk"))
        if len(_steps_cache) > 500:
            _steps_cache.clear()
        _steps_cache[key] = steps
    return steps


def forget_steps(automation_id: int | None = None):
    for key in list(_steps_cache):
        if automation_id is None or key[0] == automation_id:
            _steps_cache.pop(key, None)


def _step_at(row) -> Step | None:
    for step in steps_of(row.automation_id, row.version):
        if step.position >= row.position:
            return step
    return None


def _next_position(row, step) -> int:
    later = [s.position for s in steps_of(row.automation_id, row.version) if s.position > step.position]
    return later[0] if later else step.position + 1


def advance(now=None, batch=BATCH, limit=None) -> int:
    """Advance due enrolments batch by batch until none is due (or ``limit`` were done); how many."""
    now = now or timezone.now()
    total = 0
    while limit is None or total < limit:
        done = advance_batch(now, batch)
        total += done
        if done < batch:
            break
    return total


def advance_batch(now, size=BATCH) -> int:
    with transaction.atomic():
        batch = _Batch(now)
        rows = _claim(batch, now, size)
        if not rows:
            return 0
        live = rows
        for _ in range(MAX_STEPS_PER_TICK):
            live = _run_one_step(batch, live)
            if not live:
                break
        send_ids, domains = _write_emails(batch)
        _write_rows(rows, now)
        _count(batch)
        _announce(batch)
        if send_ids:
            dispatch.enqueue_sends(send_ids, domains=domains)
    return len(rows)


def _claim(batch, now, size) -> list[_Row]:
    """Lock up to ``size`` due enrolments of active automations, and read their contacts (the mailable ones
    into ``batch.contacts``: active, and not suppressed)."""
    if connection.vendor != "postgresql":
        rows = [_Row(*r) for r in Enrolment.objects.select_for_update(skip_locked=True, of=("self",)).filter(
            status=Enrolment.Status.ACTIVE, due_at__lte=now, automation__status=Automation.Status.ACTIVE,
        ).order_by("due_at").values_list("id", "automation_id", "contact_id", "occurrence", "version", "position",
                                         "payload")[:size]]
        _load_contacts(batch, rows)
        return rows
    sql = f"""
        WITH claimed AS (
            SELECT e.id FROM {Enrolment._meta.db_table} e JOIN {Automation._meta.db_table} a ON a.id = e.automation_id
            WHERE e.status = 'active' AND e.due_at <= %(now)s AND a.status = 'active'
            ORDER BY e.due_at LIMIT %(size)s
            FOR UPDATE OF e SKIP LOCKED)
        SELECT e.id, e.automation_id, e.contact_id, e.occurrence, e.version, e.position, e.payload,
               c.email, c.status = 'active' AND NOT EXISTS (
                   SELECT 1 FROM {Suppression._meta.db_table} p WHERE p.email_key = c.email_key),
               c.attributes
        FROM claimed JOIN {Enrolment._meta.db_table} e ON e.id = claimed.id
        LEFT JOIN {Contact._meta.db_table} c ON c.id = e.contact_id
    """  # noqa: S608 - table names from the models, values as parameters
    with _raw_cursor() as cur:
        cur.execute(sql, {"now": now, "size": size})
        found = cur.fetchall()
    rows = []
    for pk, automation_id, contact_id, occurrence, version, position, payload, email, mailable, attributes in found:
        # Django has psycopg hand jsonb over as text, for its JSONField to decode.
        rows.append(_Row(pk, automation_id, contact_id, occurrence, version, position, _json(payload)))
        if mailable:
            batch.contacts[contact_id] = (email, _json(attributes))
    return rows


def _json(value):
    return json.loads(value) if isinstance(value, str | bytes) else (value or {})


def _load_contacts(batch, rows):
    ids = {r.contact_id for r in rows}
    found = {pk: (email, status, attributes) for pk, email, status, attributes in
             Contact.objects.filter(id__in=ids).values_list("id", "email", "status", "attributes")}
    suppressed = set(Suppression.objects.filter(email_key__in=[email_key(v[0]) for v in found.values()])
                     .values_list("email_key", flat=True))
    for pk, (email, status, attributes) in found.items():
        if status == Contact.Status.ACTIVE and email_key(email) not in suppressed:
            batch.contacts[pk] = (email, attributes)


def _leave(batch, row, step, status, reason):
    row.status, row.reason, row.moved = status, reason, True
    if step is not None and status == Enrolment.Status.EXITED:
        batch.exited[step.pk] += 1


def _run_one_step(batch, rows) -> list[_Row]:
    """Run the step each row is at; the rows that go straight on to another step."""
    groups = defaultdict(list)
    for row in rows:
        step = _step_at(row)
        if step is None:
            _leave(batch, row, None, Enrolment.Status.DONE, "finished")
        elif row.contact_id not in batch.contacts:
            _leave(batch, row, step, Enrolment.Status.EXITED, "unsubscribed, suppressed or deleted")
        else:
            groups[step].append(row)
    onward = []
    for step, group in groups.items():
        batch.entered[step.pk] += len(group)
        batch.steps_run.extend((row, step) for row in group)
        onward.extend(RUN[step.kind](batch, step, group))
    return onward


def _email(batch, step, rows):
    for row in rows:
        batch.emails.append((row, step))
        _go_on(row, step, batch.now)
    return rows


def _go_on(row, step, due):
    row.position, row.due_at, row.moved = _next_position(row, step), due, True


def _wait(batch, step, rows):
    for row in rows:
        _go_on(row, step, wait_until(step, batch.now, batch.contacts[row.contact_id][1]))
    return []  # they carry on when the wait is over


def wait_until(step, now, attributes=None) -> datetime.datetime:
    """When a wait that starts ``now`` ends: after its duration, then at its weekday and time in the contact's zone."""
    end = now + datetime.timedelta(seconds=step.wait_seconds)
    if step.wait_time is None and step.wait_weekday is None:
        return end
    local = end.astimezone(zone_of(attributes))
    at = step.wait_time or datetime.time(0, 0)
    candidate = local.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    for _ in range(8):
        if candidate >= local and (step.wait_weekday is None or candidate.weekday() == step.wait_weekday):
            break
        # Wall-clock arithmetic, then fold back into the zone: a DST change keeps the time of day.
        nxt = (candidate.replace(tzinfo=None) + datetime.timedelta(days=1)).replace(tzinfo=candidate.tzinfo)
        candidate = nxt
    return candidate.astimezone(datetime.UTC)


def _branch(batch, step, rows):
    passed = _passing(batch, step, rows)
    onward = []
    for row in rows:
        if row.contact_id in passed:
            _go_on(row, step, batch.now)
            onward.append(row)
        elif step.else_position is not None:
            row.position, row.due_at, row.moved = step.else_position, batch.now, True
            onward.append(row)
        else:
            _leave(batch, row, step, Enrolment.Status.DONE, f"left at the branch of step {step.position}")
    return onward


def _passing(batch, step, rows) -> set[int]:
    """The contacts (of these rows) for whom the branch's condition holds."""
    contacts = [r.contact_id for r in rows]
    if step.condition == Step.Condition.RULES:
        return set(Contact.objects.filter(Compiler(batch.now).compile(step.rules or {"match": "all", "rules": []}),
                                          id__in=contacts).values_list("id", flat=True))
    # Opened / clicked the previous email of this enrolment: the latest step message before this step.
    sends = {}
    for contact, occurrence, send in (
            Message.objects.filter(automation_id=rows[0].automation_id, contact_id__in=contacts,
                                   step__position__lt=step.position)
            .order_by("step__position").values_list("contact_id", "occurrence", "send_id")):
        sends[(contact, occurrence)] = send
    wanted = {sends[(r.contact_id, r.occurrence)]: r.contact_id for r in rows if (r.contact_id, r.occurrence) in sends}
    types = [Event.Type.CLICK] if step.condition == Step.Condition.CLICKED else [Event.Type.OPEN, Event.Type.CLICK]
    hits = Event.objects.filter(send_id__in=list(wanted), type__in=types, machine=False).values_list("send_id", flat=True)
    return {wanted[s] for s in hits}


def _update(batch, step, rows):
    ids = [r.contact_id for r in rows]
    spec = step.update or {}
    changes = spec.get("set") or {}
    if changes:
        for contact in Contact.objects.filter(id__in=ids).only("id", "attributes"):
            contact.attributes = {**(contact.attributes or {}), **changes}
            Contact.objects.filter(pk=contact.pk).update(attributes=contact.attributes, updated_at=batch.now)
    if spec.get("add_list"):
        Subscription.objects.bulk_create(
            [Subscription(contact_id=c, mailing_list_id=int(spec["add_list"]), status=Subscription.Status.CONFIRMED,
                          source=Subscription.Source.API, source_detail=f"automation {step.automation_id}")
             for c in ids], ignore_conflicts=True)
    if spec.get("remove_list"):
        Subscription.objects.filter(contact_id__in=ids, mailing_list_id=int(spec["remove_list"])).update(
            status=Subscription.Status.UNSUBSCRIBED, updated_at=batch.now)
    for row in rows:
        _go_on(row, step, batch.now)
    return rows


def _end(batch, step, rows):
    for row in rows:
        _leave(batch, row, step, Enrolment.Status.DONE, f"ended at step {step.position}")
    return []


RUN = {Step.Kind.EMAIL: _email, Step.Kind.WAIT: _wait, Step.Kind.BRANCH: _branch, Step.Kind.UPDATE: _update,
       Step.Kind.END: _end}


# --- writing the batch back -------------------------------------------------------


def _write_emails(batch) -> tuple[list[int], list[str]]:
    """Insert each email step's Message where its key is new, and a queued Send for each one inserted."""
    if not batch.emails:
        return [], []
    now = batch.now
    items = [(row.automation_id, step.pk, row.contact_id, row.occurrence, step.template_id, row.payload)
             for row, step in batch.emails]
    if connection.vendor == "postgresql":
        rows = _insert_postgres(items, now)
        return [r[0] for r in rows], [r[1] for r in rows]

    def send_for(send_id, contact_id):
        email = batch.contacts[contact_id][0]
        return Send(id=send_id, contact_id=contact_id, email=email, domain=email.rpartition("@")[2].lower(),
                    status=Send.Status.QUEUED, next_attempt_at=now)

    sends = _insert_messages_orm(items, now, send_for)
    return [s.id for s in sends], [s.domain for s in sends]


# The Send columns the sweep fills; every other column gets its model default.
_SEND_VALUES = {"id": "m.send_id", "contact_id": "m.contact_id", "email": "c.email",
                "domain": "lower(split_part(c.email, '@', 2))", "status": "'queued'", "next_attempt_at": "%(now)s",
                "created_at": "%(now)s", "updated_at": "%(now)s"}


def _send_insert(params) -> str:
    columns, values = [], []
    for model_field in Send._meta.concrete_fields:
        columns.append(connection.ops.quote_name(model_field.column))
        if model_field.attname in _SEND_VALUES:
            values.append(_SEND_VALUES[model_field.attname])
        else:
            name = f"d_{model_field.attname}"
            params[name] = model_field.get_db_prep_save(model_field.get_default(), connection)
            values.append(f"%({name})s")
    return f"INSERT INTO {Send._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(values)}"  # noqa: S608


def _insert_postgres(items, now):
    """One statement: the Messages whose key is new, each with a Send id drawn for it, and those Sends;
    (send id, domain) of each Send inserted."""
    columns = list(zip(*items, strict=True))
    params = {"now": now, "a": list(columns[0]), "s": list(columns[1]), "c": list(columns[2]), "o": list(columns[3]),
              "t": list(columns[4]), "p": [json.dumps(p or {}) for p in columns[5]]}
    sql = f"""
        WITH m AS (
            INSERT INTO {Message._meta.db_table}
                   (automation_id, step_id, contact_id, occurrence, template_id, payload, send_id, created_at)
            SELECT a, s, c, o, t, p::jsonb, nextval(pg_get_serial_sequence('{Send._meta.db_table}', 'id')), %(now)s
            FROM unnest(%(a)b::bigint[], %(s)b::bigint[], %(c)b::bigint[], %(o)b::bigint[], %(t)b::bigint[],
                        %(p)b::text[]) AS v(a, s, c, o, t, p)
            ON CONFLICT (automation_id, step_id, contact_id, occurrence) DO NOTHING
            RETURNING send_id, contact_id)
        {_send_insert(params)}
        FROM m JOIN {Contact._meta.db_table} c ON c.id = m.contact_id
        RETURNING id, domain
    """  # noqa: S608 - table and column names from the models, values as parameters
    with _raw_cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _raw_cursor():
    """psycopg's own cursor: parameters bound by the server, not quoted into the text (arrays of a thousand ids)."""
    import psycopg

    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _insert_messages_orm(items, now, send_for):
    """SQLite has one writer at a time: the keys not there yet are this batch's to insert."""
    existing = set(Message.objects.filter(step_id__in={i[1] for i in items}, contact_id__in={i[2] for i in items})
                   .values_list("automation_id", "step_id", "contact_id", "occurrence"))
    fresh = [i for i in items if i[:4] not in existing]
    sends = Send.objects.bulk_create([send_for(None, i[2]) for i in fresh])
    Message.objects.bulk_create([Message(automation_id=a, step_id=s, contact_id=c, occurrence=o, template_id=t,
                                         payload=p or {}, send_id=send.pk, created_at=now)
                                 for (a, s, c, o, t, p), send in zip(fresh, sends, strict=True)])
    return sends


def _write_rows(rows, now):
    moved = [r for r in rows if r.moved]
    if not moved:
        return
    if connection.vendor == "postgresql":
        with _raw_cursor() as cur:
            cur.execute(
                f"""
                UPDATE {Enrolment._meta.db_table} e SET position = v.p, due_at = COALESCE(v.d, e.due_at), status = v.s,
                       reason = v.r, updated_at = %s
                FROM unnest(%b::bigint[], %b::bigint[], %b::timestamptz[], %b::text[], %b::text[]) AS v(id, p, d, s, r)
                WHERE e.id = v.id
                """,  # noqa: S608
                [now, [r.id for r in moved], [r.position for r in moved], [r.due_at for r in moved],
                 [r.status for r in moved], [r.reason for r in moved]],
            )
        return
    for r in moved:
        Enrolment.objects.filter(pk=r.id).update(position=r.position, due_at=r.due_at or now, status=r.status,
                                                 reason=r.reason, updated_at=now)


def _count(batch):
    """Per-step statistics: contacts who reached each step, and who left at it."""
    for step_id in sorted(set(batch.entered) | set(batch.exited)):
        Step.objects.filter(pk=step_id).update(entered=F("entered") + batch.entered.get(step_id, 0),
                                               exited=F("exited") + batch.exited.get(step_id, 0))


def _announce(batch):
    """The automation-step webhook, in the batch's transaction (written only when an endpoint wants it)."""
    if not batch.steps_run or not outbox.wanted(outbox.AUTOMATION_STEP):
        return
    outbox.publish(outbox.AUTOMATION_STEP, [
        {"automation_id": row.automation_id, "step_id": step.pk, "step_position": step.position, "step_kind": step.kind,
         "contact_id": row.contact_id, "email": batch.contacts.get(row.contact_id, ("",))[0],
         "occurrence": row.occurrence}
        for row, step in batch.steps_run])


def exit_unmailable(now=None) -> int:
    """Enrolments of contacts who unsubscribed from everything, were blocklisted or suppressed leave at once."""
    now = now or timezone.now()
    gone = Contact.objects.exclude(status=Contact.Status.ACTIVE).values("id")
    count = Enrolment.objects.filter(status=Enrolment.Status.ACTIVE, contact_id__in=gone).update(
        status=Enrolment.Status.EXITED, reason="unsubscribed or blocklisted", updated_at=now)
    suppressed_ids = Contact.objects.filter(email_key__in=Suppression.objects.values("email_key")).values("id")
    count += Enrolment.objects.filter(status=Enrolment.Status.ACTIVE, contact_id__in=suppressed_ids).update(
        status=Enrolment.Status.EXITED, reason="suppressed", updated_at=now)
    # Someone welcomed for joining a list who left that list gets no more of its welcome.
    left_list = Subscription.objects.filter(contact_id=OuterRef("contact_id"), status=Subscription.Status.UNSUBSCRIBED,
                                            mailing_list_id=OuterRef("automation__mailing_list_id"))
    count += Enrolment.objects.filter(status=Enrolment.Status.ACTIVE, automation__trigger=Automation.Trigger.SUBSCRIBED
                                      ).filter(Exists(left_list)).update(
        status=Enrolment.Status.EXITED, reason="unsubscribed from the list", updated_at=now)
    return count
