"""What an SMTP reply means for one recipient, and when to try again.

One reading of replies for all of Herald: the engine reads the reply it gets
at send time through ``classify_reply(code, text) -> Outcome``, and tracking
reads the same reply when it comes back later (a DSN's Status and
Diagnostic-Code, an ESP's webhook, a home-made bounce text) through
``judge(code, text, status) -> Verdict``. Both act on one verdict:

========  ==============================================  ======================  ==================
verdict   meaning                                         engine                  tracking
========  ==============================================  ======================  ==================
hard      the address is dead                             bounced, suppressed     bounce, suppressed
soft      permanent for this message, the mailbox may     failed                  soft bounce (counted)
          recover (full, its system not accepting)
policy    the receiver refused the sender or the message  failed                  rejected
          (reputation, authentication, content, size)
transient any 4.x.x / 4xx reply                           deferred, retried       soft bounce, or
                                                                                  rejected for 4.7.x
========  ==============================================  ======================  ==================

How a reply is read (RFC 3463 §2–3, RFC 5321 §4.2):

1. The enhanced status code decides first: a DSN's Status field, else the
   first code in the text. A bare ``x.0.0`` gives way to a more precise code of
   the same class in the text (Exim writes ``Status: 5.0.0`` over ``550 5.1.1``).
   Its class decides permanence: 2 delivered, 4 transient, 5 permanent; its
   subject and detail decide what failed (``_PERMANENT`` below).
2. Without an enhanced code, the basic reply code does (``_BASIC`` below).
3. Words in the text only break ties: where the code is generic (5.0.0, an
   "other" detail such as 5.2.0, a bare 550 or 554) or absent. A refusal of the
   sender outranks a full or temporary mailbox, which outranks a dead one: with
   contradictory words Herald never suppresses at once. One exception: a plain
   "no such mailbox" that names no refusal of the sender outranks a 5.7.x code,
   which some servers give unknown users (vpopmail's "#5.7.17").

A failure notice written for people (a bounce that is no RFC 3464 DSN) is read
by ``read_notice(text) -> Finding``: its first quoted 4xx/5xx reply as above,
else its words, else whether it calls the failure permanent.
"""

import random
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings

# The engine's outcomes for one recipient.
SENT = "sent"
DEFERRED = "deferred"
BOUNCED = "bounced"
FAILED = "failed"

# Verdicts on a reply (the table above).
DELIVERED = "delivered"
HARD = "hard"
SOFT = "soft"
POLICY = "policy"
UNKNOWN = "unknown"  # no code and no telling words

# RFC 3463 enhanced status code, not part of a longer dotted number (an IP address).
STATUS_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)")
# RFC 5321 basic reply code: "550 …", "550-…", "smtp; 550 …".
BASIC_CODE = re.compile(r"(?:^|[\s(;:])([245]\d\d)(?=[\s-]|$)")

# Words, for ties only (see the module docstring). A refusal of the sender
# first, then a full or temporarily unavailable mailbox, then a dead one.
_POLICY_WORDS = re.compile(
    r"block(?:ed|list|ing)|blacklist|denylist|spam|reputation|policy|not authori[sz]ed|unauthenticated|authenticat"
    r"|\bspf\b|\bdkim\b|\bdmarc\b|relay(?:ing)? (?:access )?denied|sender (?:address )?rejected|sender domain"
    r"|message (?:size|too (?:big|large))|size exceeds|too (?:big|large)|content rejected",
    re.I,
)
_SOFT_WORDS = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota exceeded|exceeded (?:the |its )?(?:storage|quota)|insufficient (?:storage|space)"
    r"|temporar|try (?:again )?later|come back later|greylist|rate limit|too many|too quickly|timed? ?out"
    r"|connection refused|out of resources",
    re.I,
)
_HARD_WORDS = re.compile(
    r"user unknown|unknown (?:user|recipient)|no such (?:user|mailbox|recipient|address|account)|does ?n[o']t exist"
    r"|not exist|doesn'?t have an? [\w.-]+ account|invalid (?:recipient|mailbox|address|user)"
    r"|recipient (?:address )?rejected|address rejected|mailbox (?:not found|disabled|does not)|no mailbox"
    r"|not a valid mailbox|account (?:has been |is )?(?:disabled|deactivated|closed)|unrout(?:e)?able"
    r"|host not found|domain not found|nonexistent domain|no mx|null mx|recipient not found|user not found"
    r"|address not found|undeliverable address|not our customer|bad destination mailbox",
    re.I,
)
# A transient reply that asks the sender to slow down (besides any 421, which
# closes the session): only explicit words about rate or volume. Greylisting
# ("451 4.7.1 greylisted, try again later") and a full mailbox (4.2.2) are
# about one message or one mailbox: slowing the whole destination for them
# would only delay everyone else.
_THROTTLE = re.compile(
    r"rate[ -]?limit|\brate\b|too many (?:messages|mails?|e-?mails|connections|sessions|concurrent)"
    r"|throttl|slow(?:ing)? down|too (?:fast|quickly)|unexpected volume|sending (?:rate|volume)",
    re.IGNORECASE,
)
_NOT_THROTTLE = re.compile(r"grey ?list|gray ?list|postgrey|mailbox (?:is )?full|over ?quota|quota exceeded", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    kind: str
    words: bool = False  # a generic code: telling words in the text may overrule ``kind``


# Permanent enhanced codes, 5.<subject>.<detail>, by (subject, detail) and then
# (subject, None) for the rest of the subject (RFC 3463 §3).
_PERMANENT = {
    ("0", None): Rule(SOFT, words=True),  # 5.0.0: other or undefined
    ("1", None): Rule(HARD),  # bad mailbox (1.1), domain (1.2), syntax (1.3), moved (1.6), null MX (1.10)
    ("1", "0"): Rule(HARD, words=True),  # other address status
    ("1", "7"): Rule(POLICY),  # the sender's address is bad: our side, not the recipient's
    ("1", "8"): Rule(POLICY),
    ("2", None): Rule(SOFT, words=True),  # mailbox status, other
    ("2", "1"): Rule(HARD),  # mailbox disabled
    ("2", "2"): Rule(SOFT),  # mailbox full: persistent, not permanent
    ("2", "3"): Rule(POLICY, words=True),  # message longer than the mailbox takes; some servers mean "full"
    ("3", None): Rule(SOFT, words=True),  # the receiving system is full or not accepting mail
    ("3", "4"): Rule(POLICY),  # message too big for the system
    ("4", None): Rule(SOFT, words=True),  # network and routing: no answer, expired, …
    ("4", "4"): Rule(HARD),  # unable to route: the domain has no mail host
    ("5", None): Rule(POLICY, words=True),  # protocol: a fault of the sending side
    ("6", None): Rule(POLICY),  # media and content
    ("7", None): Rule(POLICY),  # security and policy: reputation, authentication, blocklists
}
# Permanent basic codes, when the reply carries no enhanced code (RFC 5321 §4.2.2, RFC 7504).
_BASIC = {
    550: Rule(SOFT, words=True),  # "mailbox unavailable": not found, no access and policy alike
    551: Rule(HARD),  # user not local
    552: Rule(SOFT, words=True),  # exceeded storage allocation
    553: Rule(HARD, words=True),  # mailbox name not allowed
    554: Rule(POLICY, words=True),  # transaction failed
    521: Rule(HARD),  # the host accepts no mail
    556: Rule(HARD),  # the domain accepts no mail (null MX)
}
_OTHER_PERMANENT = Rule(POLICY)  # 500–504 syntax, 530/535 authentication: the sending side


@dataclass(frozen=True)
class Verdict:
    kind: str  # delivered | hard | soft | policy | unknown
    transient: bool = False  # 4.x.x / 4xx: try again later
    status: str = ""  # the enhanced code it was read from
    throttle: bool = False  # the destination asks the sender to slow down


@dataclass(frozen=True)
class Outcome:
    status: str  # sent | deferred | bounced | failed
    code: int | None
    text: str
    suppress: bool = False  # a hard bounce: never mail this address again
    throttle: bool = False  # the destination asks us to slow down

    @property
    def final(self):
        return self.status != DEFERRED

    @property
    def reply(self):
        return f"{self.code} {self.text}".strip() if self.code else self.text


def best_status(status: str = "", text: str = "") -> str:
    """The enhanced code: the Status field, unless absent or a bare x.0.0 and the text has a precise one."""
    match = STATUS_CODE.search(status or "")
    code = ".".join(match.groups()) if match else ""
    if not code or code.endswith(".0.0"):
        found = STATUS_CODE.search(text or "")
        if found and (not code or found.group(1) == code[0]):
            return ".".join(found.groups())
    return code


def basic_code(text: str) -> int | None:
    match = BASIC_CODE.search(text or "")
    return int(match.group(1)) if match else None


def hint(text: str) -> str:
    """The verdict the words of a reply suggest, or ""."""
    lowered = (text or "").lower()
    for kind, tables in _QUICK_WORDS:
        if any(words.search(lowered) for words in tables):
            return kind
    return ""


def is_throttle(code: int | None, text: str, enhanced: str = "") -> bool:
    """Does a transient reply ask the sender to slow down? A 421 always does
    (the server closes the session); otherwise only explicit rate or volume
    words, never greylisting or a full mailbox."""
    if code == 421:
        return True
    if enhanced == "4.2.2" or _NOT_THROTTLE.search(text or ""):
        return False
    return bool(_THROTTLE.search(text or ""))


def judge(code: int | None = None, text: str = "", status: str = "") -> Verdict:
    """The verdict on a reply: its basic code (else the first in ``text``), its text, and a DSN's Status field."""
    text = text or ""
    if code is None:
        code = basic_code(text)
    enhanced = best_status(status, text)
    if enhanced:
        klass, subject, detail = enhanced.split(".")
    elif code:
        klass, subject, detail = str(code)[0], "", ""
    else:
        return Verdict(hint(text) or UNKNOWN)
    if klass == "2":
        return Verdict(DELIVERED, status=enhanced)
    if klass == "4" or code == 421:  # 421: the server is closing the session, whatever else it says
        return Verdict(POLICY if subject == "7" else SOFT, transient=True, status=enhanced,
                       throttle=is_throttle(code, text, enhanced))
    if klass != "5":
        return Verdict(UNKNOWN, status=enhanced)
    if enhanced:
        rule = _PERMANENT.get((subject, detail)) or _PERMANENT.get((subject, None)) or Rule(SOFT, words=True)
    else:
        rule = _BASIC.get(code, _OTHER_PERMANENT)
    kind = (hint(text) or rule.kind) if rule.words else rule.kind
    if kind == POLICY and subject == "7" and mailbox_gone(text):
        kind = HARD
    return Verdict(kind, status=enhanced)


def classify_reply(code: int | None, text: str = "") -> Outcome:
    """Classify one recipient's reply at send time; ``code=None`` means the connection broke or timed out."""
    text = (text or "").strip()
    if code is None:
        return Outcome(DEFERRED, None, text or "connection lost")
    if 200 <= code < 300:
        return Outcome(SENT, code, text)
    verdict = judge(code, text)
    if verdict.transient:
        return Outcome(DEFERRED, code, text, throttle=verdict.throttle)
    if verdict.kind == HARD:
        return Outcome(BOUNCED, code, text, suppress=True)
    # Soft, policy and the unreadable: this message failed, the address stays.
    return Outcome(FAILED, code, text or "unexpected reply")


def retry_delay(attempts: int, rng=random) -> float:
    """Seconds before the next try after ``attempts`` tries: doubling, capped, with ±20% jitter."""
    first = settings.HERALD_RETRY_FIRST_DELAY
    cap = max(settings.HERALD_RETRY_MAX_DELAY, first)
    base = min(cap, first * (2 ** max(attempts - 1, 0)))
    return base * rng.uniform(0.8, 1.2) if base else 0.0


def next_attempt(first_attempt_at, attempts: int, now, rng=random):
    """When to try again, or None when the give-up age is reached (the send then fails)."""
    if first_attempt_at is not None and (now - first_attempt_at).total_seconds() >= settings.HERALD_GIVE_UP_AFTER:
        return None
    at = now + timedelta(seconds=retry_delay(attempts, rng))
    if first_attempt_at is not None and (at - first_attempt_at).total_seconds() > settings.HERALD_GIVE_UP_AFTER:
        # One last try at the give-up age rather than none at all.
        at = first_attempt_at + timedelta(seconds=settings.HERALD_GIVE_UP_AFTER)
    return at


# Words in more replies and failure notices than the engine's own: the wording
# of many MTAs over two decades, and of German, French, Spanish, Portuguese and
# Russian ones. Like the words above, they only break ties.
_MORE_POLICY_WORDS = re.compile(
    r"unsolicited|\bdnsbl\b|\brbl\b|not accepting mail from|unable to relay|not accepted here"
    r"|gesperrt|blockiert|unerw[üu]nscht|bloqu[ée]|ind[ée]sirable|bloquead|no deseado|lista negra"
    r"|спам|заблокирован|черн\w* списк",
    re.I,
)
_MORE_SOFT_WORDS = re.compile(
    r"quota|full mailbox|mailfolder is full|mailbox (?:is )?full|(?:not|n't) (?:have )?enough (?:storage|space|disk)"
    r"|space not enough"
    r"|dis[ck] ?space|loops? back|mail loop|message looping|too many hops|not reachable|could not initiate"
    r"|connection (?:was )?(?:dropped|refused|timed out)|unable to connect|temporary failure|not collected"
    r"|maximum delivery attempts|could not find a gateway|not unique|not found, try again"
    r"|postfach (?:ist )?voll|speicherplatz|kontingent|bo[iî]te (?:aux lettres )?pleine|espace insuffisant"
    r"|buz[oó]n (?:est[aá] )?lleno|caixa (?:postal )?(?:est[aá] )?cheia|переполнен|квот",
    re.I,
)
_MORE_HARD_WORDS = re.compile(
    r"unknown (?:or illegal )?(?:user|alias|recipient|host|address)|(?:addressee|address|user) (?:unknown|not known)"
    r"|not (?:a )?valid (?:user|address)|no longer valid|(?:name|address) is not recognized"
    r"|not listed in (?:the )?(?:public name|domino directory|name & address book)"
    r"|no matches to nameserver|final e-?mail delivery point|did not exactly match|unrouteable|nonexistent user"
    r"|disabled or discontinued|invalid final delivery|domain does not exist|no such domain"
    # The sender's address may be "unknown" too ("Absender unbekannt"): only the recipient's counts here.
    r"|(?:benutzer|empf(?:ä|ae|a)nger|adresse|postfach|mailbox|konto)\w* (?:ist )?(?:unbekannt|existiert nicht)"
    r"|unbekannte[rs]? (?:benutzer|empf(?:ä|ae|a)nger|adresse)|ung(?:ü|ue|u)ltige? (?:adresse|empf(?:ä|ae|a)nger|e-?mail)"
    r"|n'existe pas|(?:destinataire|utilisateur|adresse|bo[iî]te)\w*(?: \w+)? inconnu|introuvable|non recens[ée]"
    r"|adresse (?:invalide|incorrecte)|no existe|(?:usuario|destinatario|direcci[oó]n|cuenta) desconocid"
    r"|direcci[oó]n (?:inv[aá]lida|no v[aá]lida)|n[aã]o existe|(?:usu[aá]rio|destinat[aá]rio|endere[cç]o|conta) desconhecid"
    r"|endere[cç]o inv[aá]lido|(?:caixa postal|conta|usu[aá]rio) inexistente|не существует|несуществующ"
    r"|неизвестн\w* (?:получател|пользовател|адрес|ящик)|нет такого|недействительн",
    re.I,
)
# Outranks a 5.7.x code: some servers (qmail's vpopmail among them, "#5.7.17")
# file an unknown mailbox under security and policy.
_MAILBOX_GONE = re.compile(
    r"no mailbox here by that name|no such (?:user|mailbox|recipient)|user unknown|unknown user|nonexistent user"
    r"|(?:mailbox|user|address|account) does ?n[o']t exist",
    re.I,
)
# A notice that calls the failure permanent (qmail's "This is a permanent error;
# I've given up", Gmail's "failed permanently").
_PERMANENT_NOTICE = re.compile(r"permanent(?:ly)?\b|given up|fatal error", re.I)
# The first 4xx or 5xx reply in a notice: an enhanced code, or a basic one that is no phone number (480-624-2500).
_FAILURE_CODE = re.compile(
    r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)"
    r"|(?:^|[\s;:\[#])([45]\d\d)(?=[\s\-:\]]|$)(?!-\d{3}-\d{4})"
)


def mailbox_gone(text: str) -> bool:
    """The text says plainly that the mailbox does not exist, and names no refusal of the sender."""
    return bool(_MAILBOX_GONE.search(text or "")) and not (
        _POLICY_WORDS.search(text or "") or _MORE_POLICY_WORDS.search(text or ""))


@dataclass(frozen=True)
class Finding:
    kind: str  # hard | soft | policy | unknown
    status: str = ""  # the enhanced code the verdict was read from
    diagnostic: str = ""  # the words that decided
    reason: str = ""  # why, for an operator


def read_notice(text: str) -> Finding:
    """The verdict of a failure notice written for people (a bounce that is not RFC 3464).

    The first 4xx or 5xx reply quoted in the text decides, read as ``judge``
    reads any reply (a greeting such as "220 mx ready" or a "250 ok" in a
    transcript is no diagnosis); without one, the words of the whole notice;
    without telling words, a notice that calls the failure permanent is hard
    (qmail's "I've given up") and any other is soft.
    """
    flat = " ".join((text or "").split())[:8000]
    match = _FAILURE_CODE.search(flat)
    if match:
        start = match.start()
        # The reply, with a little of what led up to it ("…mailbox unavailable. [SMTP Error Code 550]").
        window = flat[max(0, start - 120):start + 300]
        code = int(match.group(4)) if match.group(4) else None
        verdict = judge(code, window, "" if code else ".".join(match.group(1, 2, 3)))
        if verdict.kind != UNKNOWN:
            kind = POLICY if verdict.kind == POLICY else (SOFT if verdict.transient else verdict.kind)
            found = verdict.status or (str(code) if code else "")
            return Finding(kind, verdict.status, window[min(start, 120):][:300],
                           f"reply {found} quoted in the notice")
    words = hint(flat)
    if words:
        return Finding(words, "", flat[:300], f"the notice says {_telling_words(flat, words)!r}: {words}")
    if _PERMANENT_NOTICE.search(flat):
        return Finding(HARD, "", flat[:300], "the notice calls the failure permanent and gives no other reason")
    return Finding(UNKNOWN, "", flat[:300], "the notice gives no reason")


def _telling_words(text: str, kind: str) -> str:
    """The words in ``text`` that made ``hint`` say ``kind``."""
    lowered = text.lower()
    tables = dict(_LOWERCASE_WORDS).get(kind, ())
    if len(lowered) != len(text):  # lowering moved the words (a rare letter such as İ): read the text as it is
        lowered, tables = text, [re.compile(words.pattern, re.I) for words in tables]
    for words in tables:
        match = words.search(lowered)
        if match:
            return text[match.start():match.end()][:60]
    return ""


# The words above, compiled to search lowercased text: the same matches as ignoring case (for every
# letter the tables spell), and several times faster, as a pattern ignoring case loses the quick
# scans for its literal words.
_LOWERCASE_WORDS = [(kind, [re.compile(words.pattern) for words in tables]) for kind, tables in (
    (POLICY, (_POLICY_WORDS, _MORE_POLICY_WORDS)), (SOFT, (_SOFT_WORDS, _MORE_SOFT_WORDS)),
    (HARD, (_HARD_WORDS, _MORE_HARD_WORDS)))]


def _top_alternatives(pattern: str) -> list[str]:
    """The alternatives of a pattern's outermost ``|``."""
    found, depth, escaped, start = [], 0, False, 0
    for at, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "|" and depth == 0:
            found.append(pattern[start:at])
            start = at + 1
    return found + [pattern[start:]]


def _quick(words: re.Pattern) -> list[re.Pattern]:
    """``words`` (lowercase) as one pattern of the alternatives that begin with a letter and one of the rest.

    Whether any matches is unchanged; a pattern whose every alternative begins with a letter is
    searched several times faster, and one ``\\b`` or group in front spoils that for all.
    """
    alternatives = _top_alternatives(words.pattern)
    plain = [a for a in alternatives if a[:1].isalpha()]
    other = [a for a in alternatives if not a[:1].isalpha()]
    return [re.compile("|".join(group)) for group in (plain, other) if group]


_QUICK_WORDS = [(kind, [quick for words in tables for quick in _quick(words)]) for kind, tables in _LOWERCASE_WORDS]

