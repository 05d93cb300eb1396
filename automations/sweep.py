"""The due-steps sweep: advance every enrolment whose next step is due, a claimed batch at a time.

One transaction per batch claims its rows (``FOR UPDATE SKIP LOCKED``, so two
ticks never hold the same enrolment), runs each contact's steps up to the next
wait, writes the email steps' Send rows and the enrolments' new places, and
commits. A worker killed before the commit leaves nothing behind (the next tick
redoes the batch); one killed after it has sent nothing twice, because every
email step's Message carries the unique key (automation, step, contact,
occurrence) and is inserted only where that key is new.

Set-based: contacts at the same step move together, one statement per kind of
write and batch (the Messages and their Sends, the enrolments' new places, the
steps' counts), with only ids travelling between Python and PostgreSQL; the
trigger's payload goes from the enrolment to its Message inside the database.
bench/automation.py measures it.
"""

import bisect
import datetime
import json
import logging
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import connection, connections, transaction
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

log = logging.getLogger(__name__)

BATCH = 5000
# Steps run back to back in one batch before a contact waits (a chain of branches and updates).
MAX_STEPS_PER_TICK = 20
ACTIVE, DONE, EXITED = Enrolment.Status.ACTIVE, Enrolment.Status.DONE, Enrolment.Status.EXITED


@dataclass(slots=True)
class _Row:
    id: int
    automation_id: int
    contact_id: int
    occurrence: int
    version: int
    position: int
    due_at: datetime.datetime = None
    status: str = ACTIVE
    reason: str = ""
    moved: bool = False


@dataclass
class _Batch:
    now: datetime.datetime
    mailable: set = field(default_factory=set)  # contact ids: active, and not suppressed
    emails: list = field(default_factory=list)  # (step, rows)
    entered: dict = field(default_factory=lambda: defaultdict(int))
    exited: dict = field(default_factory=lambda: defaultdict(int))
    steps_run: list = field(default_factory=list)  # (step, rows) for the webhook
    plans: dict = field(default_factory=dict)  # (automation, version) -> Plan, read once per batch


class Plan:
    """The steps of one version, by position: which step a contact is due to run, and which one holds them.

    An enrolment's ``position`` is that of the next step to run; the step it is
    *at* (waiting in, or leaving from) is the last one before that position.
    """

    def __init__(self, steps: list[Step]):
        self.steps = steps
        self.positions = [s.position for s in steps]
        # Where a contact goes after each step: the next position up (steps sharing a position run only once).
        self.following = {}
        for s in steps:
            n = bisect.bisect_right(self.positions, s.position)
            self.following[s.pk] = self.positions[n] if n < len(steps) else s.position + 1

    def next_step(self, position: int) -> Step | None:
        n = bisect.bisect_left(self.positions, position)
        return self.steps[n] if n < len(self.steps) else None

    def holding(self, position: int) -> Step | None:
        n = bisect.bisect_left(self.positions, position)
        return self.steps[n - 1] if n else None


def plan_of(automation_id: int, version: int, cache: dict | None = None) -> Plan:
    """The steps of one version, read once per ``cache`` (the sweep keeps one per batch: a version's steps are
    edited in place while no contact is on it, so a process-wide copy could be stale in another process)."""
    key = (automation_id, version)
    plan = cache.get(key) if cache is not None else None
    if plan is None:
        plan = Plan(list(Step.objects.filter(automation_id=automation_id, version=version)
                         .select_related("template").order_by("position", "pk")))
        if cache is not None:
            cache[key] = plan
    return plan


def advance(now=None, batch=BATCH, limit=None) -> int:
    """Advance due enrolments batch by batch until none is due (or ``limit`` were done); how many."""
    now = now or timezone.now()
    total = 0
    with _Handoff() as handoff:
        while limit is None or total < limit:
            done = advance_batch(now, batch, handoff)
            total += done
            if done < batch:
                break
    return total


def advance_batch(now, size=BATCH, handoff=None) -> int:
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
        count_steps(batch.entered, batch.exited)
        _announce(batch)
        if send_ids and handoff is not None and handoff.running:
            transaction.on_commit(lambda: handoff.put((send_ids, domains)))
        elif send_ids:
            dispatch.enqueue_sends(send_ids, domains=domains)
    return len(rows)


class _Handoff:
    """Hands each committed batch's Sends to the engine from a thread of its own, while the next batch is
    claimed and written: publishing to the broker costs about as much as a batch's SQL.

    Only when this thread's commits are real (not inside a caller's transaction, as
    in a test): the thread's own database connection sees only committed rows. A
    process that dies before the hand-off leaves its Sends queued in the ledger,
    where the engine's sweeper finds them, as after any crash between a commit and
    its hand-off.
    """

    def __init__(self):
        self.running = not connection.in_atomic_block
        self.queue = queue.SimpleQueue()
        self.thread = None
        self.error = None

    def __enter__(self):
        if self.running:
            self.thread = threading.Thread(target=self._run, name="automations-handoff", daemon=True)
            self.thread.start()
        return self

    def put(self, item):
        self.queue.put(item)

    def _run(self):
        try:
            while (item := self.queue.get()) is not None:
                try:
                    dispatch.enqueue_sends(item[0], domains=item[1])
                except Exception as exc:  # the rows stay queued: the engine's sweeper hands them over later
                    self.error = exc
        finally:
            connections.close_all()

    def __exit__(self, *exc):
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            if self.error is not None:
                log.warning("could not hand some automation sends to the engine (they stay queued): %s", self.error)
        return False


def _claim(batch, now, size) -> list[_Row]:
    """Lock up to ``size`` due enrolments of active automations, and note which of their contacts are mailable
    (active, and not suppressed)."""
    if connection.vendor != "postgresql":
        rows = [_Row(*r) for r in Enrolment.objects.select_for_update(skip_locked=True, of=("self",)).filter(
            status=ACTIVE, due_at__lte=now, automation__status=Automation.Status.ACTIVE,
        ).order_by("due_at").values_list("id", "automation_id", "contact_id", "occurrence", "version", "position")[:size]]
        _load_mailable(batch, rows)
        return rows
    sql = f"""
        WITH claimed AS (
            SELECT e.id, e.automation_id, e.contact_id, e.occurrence, e.version, e.position
            FROM {Enrolment._meta.db_table} e JOIN {Automation._meta.db_table} a ON a.id = e.automation_id
            WHERE e.status = 'active' AND e.due_at <= %(now)s AND a.status = 'active'
            ORDER BY e.due_at LIMIT %(size)s
            FOR UPDATE OF e SKIP LOCKED)
        SELECT claimed.*, c.status = 'active' AND NOT EXISTS (
                   SELECT 1 FROM {Suppression._meta.db_table} p WHERE p.email_key = c.email_key)
        FROM claimed LEFT JOIN {Contact._meta.db_table} c ON c.id = claimed.contact_id
    """  # noqa: S608 - table names from the models, values as parameters
    with _raw_cursor() as cur:
        cur.execute(sql, {"now": now, "size": size})
        found = cur.fetchall()
    rows = []
    mailable = batch.mailable
    for pk, automation_id, contact_id, occurrence, version, position, ok in found:
        rows.append(_Row(pk, automation_id, contact_id, occurrence, version, position))
        if ok:
            mailable.add(contact_id)
    return rows


def _load_mailable(batch, rows):
    ids = {r.contact_id for r in rows}
    found = dict(Contact.objects.filter(id__in=ids, status=Contact.Status.ACTIVE).values_list("id", "email"))
    suppressed = set(Suppression.objects.filter(email_key__in=[email_key(v) for v in found.values()])
                     .values_list("email_key", flat=True))
    batch.mailable.update(pk for pk, email in found.items() if email_key(email) not in suppressed)


def _leave(batch, row, step, status, reason):
    """The enrolment ends; ``step`` (the one it ran last, if any) counts it as having left there."""
    row.status, row.reason, row.moved = status, reason, True
    if step is not None:
        batch.exited[step.pk] += 1


def _run_one_step(batch, rows) -> list[_Row]:
    """Run the step each row is at; the rows that go straight on to another step."""
    groups, steps = defaultdict(list), {}  # by step id: Django's model hash costs more than the rest of the loop
    places = {}  # (automation, version, position) -> (plan, step): rows at one place share their look-up
    mailable = batch.mailable
    for row in rows:
        place = (row.automation_id, row.version, row.position)
        found = places.get(place)
        if found is None:
            plan = plan_of(row.automation_id, row.version, batch.plans)
            found = places[place] = (plan, plan.next_step(row.position))
        plan, step = found
        if step is None:
            _leave(batch, row, plan.holding(row.position), DONE, "finished")
        elif row.contact_id not in mailable:
            _leave(batch, row, plan.holding(row.position), EXITED, "unsubscribed, suppressed or deleted")
        else:
            groups[step.id].append(row)
            steps[step.id] = step
    onward = []
    for step_id, group in groups.items():
        step = steps[step_id]
        batch.entered[step_id] += len(group)
        batch.steps_run.append((step, group))
        onward.extend(RUN[step.kind](batch, step, group))
    return onward


def _go_on(batch, rows, step, due):
    position = plan_of(step.automation_id, step.version, batch.plans).following[step.id]
    for row in rows:
        row.position, row.due_at, row.moved = position, due, True


def _email(batch, step, rows):
    batch.emails.append((step, rows))
    _go_on(batch, rows, step, batch.now)
    return rows


def _wait(batch, step, rows):
    if step.wait_time is None and step.wait_weekday is None:
        _go_on(batch, rows, step, wait_until(step, batch.now))
        return []
    # Until a time of day where each contact lives: one computation per zone.
    zones = _zones([r.contact_id for r in rows])
    by_zone = defaultdict(list)
    for row in rows:
        by_zone[zones.get(row.contact_id)].append(row)
    for zone, group in by_zone.items():
        _go_on(batch, group, step, wait_until(step, batch.now, zone=zone))
    return []  # they carry on when the wait is over


def _zones(contact_ids) -> dict:
    """{contact id: their time zone} (see automations.triggers.zone_of)."""
    found, seen = {}, {}
    for pk, attributes in Contact.objects.filter(id__in=contact_ids).values_list("id", "attributes"):
        attributes = attributes if isinstance(attributes, dict) else {}
        key = (attributes.get("timezone"), attributes.get("country"))
        if key not in seen:
            seen[key] = zone_of(attributes)
        found[pk] = seen[key]
    return found


def wait_until(step, now, attributes=None, zone=None) -> datetime.datetime:
    """When a wait that starts ``now`` ends: after its duration, then at its weekday and time in the contact's
    zone (``zone``, else the zone of the contact's ``attributes``)."""
    end = now + datetime.timedelta(seconds=step.wait_seconds)
    if step.wait_time is None and step.wait_weekday is None:
        return end
    local = end.astimezone(zone or zone_of(attributes))
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
    onward, through, elsewhere = [], [], []
    for row in rows:
        if row.contact_id in passed:
            through.append(row)
        elif step.else_position is not None:
            elsewhere.append(row)
        else:
            _leave(batch, row, step, DONE, f"left at the branch of step {step.position}")
    _go_on(batch, through, step, batch.now)
    for row in elsewhere:
        row.position, row.due_at, row.moved = step.else_position, batch.now, True
    onward.extend(through)
    onward.extend(elsewhere)
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
                                   step__version=step.version, step__position__lt=step.position)
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
    if changes and connection.vendor == "postgresql":
        with _raw_cursor() as cur:
            cur.execute(f"UPDATE {Contact._meta.db_table} SET attributes = COALESCE(attributes, '{{}}'::jsonb) "  # noqa: S608
                        "|| %s::jsonb, updated_at = %s WHERE id = ANY(%s::bigint[])",
                        [json.dumps(changes), batch.now, _id_array(ids)])
    elif changes:
        for contact in Contact.objects.filter(id__in=ids).only("id", "attributes"):
            Contact.objects.filter(pk=contact.pk).update(attributes={**(contact.attributes or {}), **changes},
                                                         updated_at=batch.now)
    if spec.get("add_list"):
        Subscription.objects.bulk_create(
            [Subscription(contact_id=c, mailing_list_id=int(spec["add_list"]), status=Subscription.Status.CONFIRMED,
                          source=Subscription.Source.API, source_detail=f"automation {step.automation_id}")
             for c in ids], ignore_conflicts=True)
    if spec.get("remove_list"):
        Subscription.objects.filter(contact_id__in=ids, mailing_list_id=int(spec["remove_list"])).update(
            status=Subscription.Status.UNSUBSCRIBED, updated_at=batch.now)
    _go_on(batch, rows, step, batch.now)
    return rows


def _end(batch, step, rows):
    for row in rows:
        _leave(batch, row, step, DONE, f"ended at step {step.position}")
    return []


RUN = {Step.Kind.EMAIL: _email, Step.Kind.WAIT: _wait, Step.Kind.BRANCH: _branch, Step.Kind.UPDATE: _update,
       Step.Kind.END: _end}


# --- writing the batch back -------------------------------------------------------


def _id_array(values) -> str:
    """A PostgreSQL array literal of integers: joined in C, where psycopg would adapt each one in Python."""
    return "{" + ",".join(map(str, values)) + "}"


def _write_emails(batch) -> tuple[list[int], list[str]]:
    """Insert each email step's Message where its key is new, and a queued Send for each one inserted."""
    if not batch.emails:
        return [], []
    if connection.vendor == "postgresql":
        found = _insert_postgres(batch.emails, batch.now)
        return [r[0] for r in found], [r[1] for r in found]
    sends = _insert_messages_orm(batch.emails, batch.now)
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


def _insert_postgres(emails, now):
    """One statement: the Messages whose key is new (each with the enrolment's payload and a Send id drawn for
    it), and those Sends; (send id, domain) of each Send inserted."""
    enrolments, steps = [], []
    for step, rows in emails:
        enrolments.extend(r.id for r in rows)
        steps.extend([step.pk] * len(rows))
    params = {"now": now, "e": _id_array(enrolments), "s": _id_array(steps)}
    sql = f"""
        WITH m AS (
            INSERT INTO {Message._meta.db_table}
                   (automation_id, step_id, contact_id, occurrence, template_id, payload, send_id, created_at)
            SELECT e.automation_id, st.id, e.contact_id, e.occurrence, st.template_id, e.payload,
                   nextval(pg_get_serial_sequence('{Send._meta.db_table}', 'id')), %(now)s
            FROM unnest(%(e)s::bigint[], %(s)s::bigint[]) AS v(e, s)
            JOIN {Enrolment._meta.db_table} e ON e.id = v.e JOIN {Step._meta.db_table} st ON st.id = v.s
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


def _insert_messages_orm(emails, now):
    """SQLite has one writer at a time: the keys not there yet are this batch's to insert."""
    rows = [(row, step) for step, group in emails for row in group]
    payloads = dict(Enrolment.objects.filter(id__in=[r.id for r, _ in rows]).values_list("id", "payload"))
    addresses = dict(Contact.objects.filter(id__in={r.contact_id for r, _ in rows}).values_list("id", "email"))
    existing = set(Message.objects.filter(step_id__in={s.pk for _, s in rows},
                                          contact_id__in={r.contact_id for r, _ in rows})
                   .values_list("automation_id", "step_id", "contact_id", "occurrence"))
    fresh = [(r, s) for r, s in rows if (r.automation_id, s.pk, r.contact_id, r.occurrence) not in existing]
    sends = Send.objects.bulk_create([
        Send(contact_id=r.contact_id, email=addresses[r.contact_id],
             domain=addresses[r.contact_id].rpartition("@")[2].lower(), status=Send.Status.QUEUED, next_attempt_at=now)
        for r, _ in fresh])
    Message.objects.bulk_create([Message(automation_id=r.automation_id, step_id=s.pk, contact_id=r.contact_id,
                                         occurrence=r.occurrence, template_id=s.template_id,
                                         payload=payloads.get(r.id) or {}, send_id=send.pk, created_at=now)
                                 for (r, s), send in zip(fresh, sends, strict=True)])
    return sends


def _write_rows(rows, now):
    """The enrolments' new places, in one statement: rows that moved alike share one set of values."""
    places = {}
    ids, which = [], []
    for r in rows:
        if r.moved:
            ids.append(r.id)
            which.append(places.setdefault((r.position, r.due_at or now, r.status, r.reason), len(places) + 1))
    if not ids:
        return
    if connection.vendor != "postgresql":
        for (position, due, status, reason), n in places.items():
            Enrolment.objects.filter(pk__in=[i for i, w in zip(ids, which, strict=True) if w == n]).update(
                position=position, due_at=due, status=status, reason=reason, updated_at=now)
        return
    values = list(places)
    with _raw_cursor() as cur:
        cur.execute(
            f"""
            UPDATE {Enrolment._meta.db_table} e SET position = g.p, due_at = g.d, status = g.s, reason = g.r,
                   updated_at = %s
            FROM unnest(%s::bigint[], %s::int[]) AS v(id, n)
            JOIN unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::text[]) WITH ORDINALITY AS g(p, d, s, r, n)
                 ON g.n = v.n
            WHERE e.id = v.id
            """,  # noqa: S608
            [now, _id_array(ids), _id_array(which), [v[0] for v in values], [v[1] for v in values],
             [v[2] for v in values], [v[3] for v in values]],
        )


def count_steps(entered: dict, exited: dict):
    """Per-step statistics, in one statement: contacts who reached each step, and who left the automation at it."""
    ids = sorted(set(entered) | set(exited))
    if not ids:
        return
    if connection.vendor != "postgresql":
        for step_id in ids:
            Step.objects.filter(pk=step_id).update(entered=F("entered") + entered.get(step_id, 0),
                                                   exited=F("exited") + exited.get(step_id, 0))
        return
    with _raw_cursor() as cur:
        cur.execute(
            f"""UPDATE {Step._meta.db_table} s SET entered = s.entered + v.n, exited = s.exited + v.x
            FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS v(id, n, x) WHERE s.id = v.id
            """,  # noqa: S608
            [_id_array(ids), _id_array(entered.get(i, 0) for i in ids), _id_array(exited.get(i, 0) for i in ids)])


def _announce(batch):
    """The automation-step webhook, in the batch's transaction (written only when an endpoint wants it)."""
    if not batch.steps_run or not outbox.wanted(outbox.AUTOMATION_STEP):
        return
    contacts = {r.contact_id for _, rows in batch.steps_run for r in rows}
    addresses = dict(Contact.objects.filter(id__in=contacts).values_list("id", "email"))
    outbox.publish(outbox.AUTOMATION_STEP, [
        {"automation_id": row.automation_id, "step_id": step.pk, "step_position": step.position, "step_kind": step.kind,
         "contact_id": row.contact_id, "email": addresses.get(row.contact_id, ""), "occurrence": row.occurrence}
        for step, rows in batch.steps_run for row in rows])


def count_exits(left) -> None:
    """Count enrolments that left outside the sweep at the step holding each: ``left`` is
    (automation id, version, position) of each."""
    exited, plans = defaultdict(int), {}
    for automation_id, version, position in left:
        step = plan_of(automation_id, version, plans).holding(position)
        if step is not None:
            exited[step.pk] += 1
    count_steps({}, exited)


def _exit(enrolments, reason, now) -> int:
    """End these active enrolments (a queryset) with ``reason``, counted at the step holding each; how many."""
    with transaction.atomic():
        # In id order: two ticks locking the same rows never wait on each other in a circle.
        left = list(enrolments.select_for_update(of=("self",)).order_by("id")
                    .values_list("id", "automation_id", "version", "position"))
        if not left:
            return 0
        Enrolment.objects.filter(id__in=[r[0] for r in left], status=ACTIVE).update(
            status=EXITED, reason=reason, updated_at=now)
        count_exits([r[1:] for r in left])
    return len(left)


def exit_unmailable(now=None) -> int:
    """Enrolments of contacts who unsubscribed from everything, were blocklisted or suppressed leave at once."""
    now = now or timezone.now()
    active = Enrolment.objects.filter(status=ACTIVE)
    gone = Contact.objects.exclude(status=Contact.Status.ACTIVE).values("id")
    count = _exit(active.filter(contact_id__in=gone), "unsubscribed or blocklisted", now)
    suppressed_ids = Contact.objects.filter(email_key__in=Suppression.objects.values("email_key")).values("id")
    count += _exit(active.filter(contact_id__in=suppressed_ids), "suppressed", now)
    # Someone welcomed for joining a list who left that list gets no more of its welcome.
    left_list = Subscription.objects.filter(contact_id=OuterRef("contact_id"), status=Subscription.Status.UNSUBSCRIBED,
                                            mailing_list_id=OuterRef("automation__mailing_list_id"))
    count += _exit(active.filter(automation__trigger=Automation.Trigger.SUBSCRIBED).filter(Exists(left_list)),
                   "unsubscribed from the list", now)
    return count
