"""Herald settings, read from the environment with a working default for one machine.

Only SECRET_KEY has none in production: it must be the same in every process.
"""

import ipaddress
import re
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from herald.env import envbool, envfloat, envint, envlist, envsecret, envstr
from herald.theme import UNFOLD as UNFOLD_THEME

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("HERALD_VAR_DIR", str(BASE_DIR / "var")))
DEBUG = envbool("DEBUG", False)


def _development_secret_key():
    """With DEBUG on, a random key kept in var/ so one machine needs no configuration."""
    path = VAR_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    path.write_text(key)
    path.chmod(0o600)
    return key


def _secret_key():
    key = envsecret("SECRET_KEY", None)
    if key:
        return key
    if DEBUG:
        return _development_secret_key()
    # A key made up per host would differ between the web and the workers, and
    # links signed by one would be refused by the other.
    raise ImproperlyConfigured(
        "SECRET_KEY is not set: give every Herald process (web, workers, beat, bounce server) the same long random "
        "string in SECRET_KEY, or in a file named by SECRET_KEY_FILE "
        "(python3 -c 'import secrets; print(secrets.token_urlsafe(60))'). Only with DEBUG=true is one made up.")


def _keys(value):
    """Keys separated by commas (or by lines, in a file), newest first."""
    return [key.strip() for key in (value or "").replace("\n", ",").split(",") if key.strip()]


def _networks(name):
    """IP addresses and CIDR networks, or "*" for every address."""
    items = envlist(name, [])
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an IP address or network ({exc})") from None
    return items


SECRET_KEY = _secret_key()
# Keys SECRET_KEY had before, newest first: links and sessions signed with them
# are still accepted, while everything new is signed with SECRET_KEY.
SECRET_KEY_FALLBACKS = _keys(envsecret("SECRET_KEY_FALLBACKS", ""))

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # The admin's theme; before the admin, whose templates it replaces (herald/theme.py).
    "unfold",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "anymail",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    # Layers, lowest first: an app imports only the ones listed before it.
    "campaigns",
    "delivery",
    "tracking",
    "submission",
    "segments",
    "audience",
    "webhooks_out",
    "automations",
]

MIDDLEWARE = [
    # First: what follows sees forwarded headers only from trusted proxies.
    "herald.proxy.TrustedProxyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who is acting, for the audit log (the API's token user is read when an entry is written).
    "campaigns.audit.AuditMiddleware",
    # Times on the admin's pages in the operator's own time zone.
    "herald.timezones.OperatorTimeZoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out sign-in.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # Counts failed sign-ins and refuses them while a user or an address is locked out.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "herald.urls"
WSGI_APPLICATION = "herald.wsgi.application"
ASGI_APPLICATION = "herald.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

try:
    DATABASES = {
        "default": dj_database_url.parse(
            envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'herald.sqlite3'}"),
            conn_max_age=envint("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL cannot be used: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes; the busy timeout
    # makes concurrent writers wait instead of failing at once.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    VAR_DIR.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "herald" / "static"]  # the admin theme's logo and styles
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(VAR_DIR / "static")))
MEDIA_ROOT = Path(envstr("MEDIA_ROOT", str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Uploads larger than this go to a temporary file rather than memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# X-Forwarded-Proto and X-Forwarded-For are honoured only from these addresses
# (the TLS proxy in front of web; gunicorn is given the same list by
# deploy/gunicorn.conf.py); from anyone else they are dropped. Empty: no one.
HERALD_TRUSTED_PROXIES = _networks("HERALD_TRUSTED_PROXIES")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if envbool("HERALD_BEHIND_TLS_PROXY", False) else None
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
# Only when every subdomain is served over HTTPS too (browsers remember it).
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Redis and Celery -------------------------------------------------------
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task is acknowledged only when it has finished, and handed back to the
# queue when its worker dies: a killed worker loses no batch.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Longer than any task or countdown, so Redis never redelivers a task that is
# still running; retries far in the future are kept in the database instead.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": envint("HERALD_VISIBILITY_TIMEOUT", 6 * 3600, minimum=60)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = envbool("HERALD_TASKS_EAGER", False)
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    # The send engine: expired leases back to the queue, due retries sent.
    "delivery-sweep": {"task": "delivery.sweep", "schedule": 30.0},
    # Claims of workers whose heartbeat stopped (killed, machine lost) come back within seconds.
    "delivery-release-dead": {"task": "delivery.release_dead", "schedule": 5.0},
    "delivery-due-retries": {"task": "delivery.due_retries", "schedule": 15.0},
    # Scheduled campaigns whose time has come are started (claimed once each).
    "delivery-dispatch-scheduled": {"task": "delivery.dispatch_scheduled", "schedule": 15.0},
    # Warm-up schedules grow, hold or step back once a day; run often so a new day starts on its new volume.
    "tracking-warmup-step": {"task": "tracking.warmup_step", "schedule": 60.0},
    # A/B tests whose wait is over get their winner, which goes to the rest of the audience.
    "tracking-choose-winners": {"task": "tracking.choose_winners", "schedule": 60.0},
    # The statistics' rows added as sends and events are written, summed into one per figure.
    "tracking-fold-tallies": {"task": "tracking.fold_tallies", "schedule": 60.0},
    # Signups nobody confirmed are forgotten after HERALD_UNCONFIRMED_PURGE_DAYS.
    "audience-purge-unconfirmed": {"task": "audience.purge_unconfirmed", "schedule": 3600.0},
    # Signups wake the confirmation sender themselves; this pass covers a lost task or a crashed worker.
    "audience-send-confirmations": {"task": "audience.send_confirmations", "schedule": 10.0},
    # Automations: triggers polled and due steps advanced; outgoing webhooks delivered from their outbox.
    "automations-tick": {"task": "automations.tick", "schedule": 5.0},
    "webhooks-out-deliver": {"task": "webhooks_out.deliver", "schedule": 2.0},
    "webhooks-out-purge": {"task": "webhooks_out.purge", "schedule": 3600.0},
}

# --- Herald -----------------------------------------------------------------
HERALD_BASE_URL = envstr("HERALD_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
HERALD_BOUNCE_DOMAIN = envstr("HERALD_BOUNCE_DOMAIN", "bounces.herald.localhost")
HERALD_RETRY_FIRST_DELAY = envint("HERALD_RETRY_FIRST_DELAY", 300, minimum=0)
HERALD_RETRY_MAX_DELAY = envint("HERALD_RETRY_MAX_DELAY", 4 * 3600, minimum=0)
HERALD_GIVE_UP_AFTER = envint("HERALD_GIVE_UP_AFTER", 72 * 3600, minimum=0)
# A scheduled campaign found more than this many seconds late (beat was down)
# is not started silently: it waits as "missed" for an operator.
HERALD_SCHEDULE_CUTOFF = envint("HERALD_SCHEDULE_CUTOFF", 6 * 3600, minimum=60)
# Quiet hours in each recipient's local time, e.g. "21:00-08:00": sends due inside them wait for their end.
# Blank: none. A campaign may set its own.
HERALD_QUIET_HOURS = envstr("HERALD_QUIET_HOURS", "")
if HERALD_QUIET_HOURS and not re.fullmatch(r"(([01]?\d|2[0-3]):[0-5]\d)-(([01]?\d|2[0-3]):[0-5]\d)", HERALD_QUIET_HOURS):
    raise ImproperlyConfigured(f"HERALD_QUIET_HOURS={HERALD_QUIET_HOURS!r} is not a span of local time such as 21:00-08:00")
HERALD_IMPORT_MAX_BYTES = envint("HERALD_IMPORT_MAX_BYTES", 512 * 1024 * 1024, minimum=1)
# Budgets of one template render (one message at send time): characters of
# output, and loop turns plus macro calls. A template over either is refused at
# save, and pauses its campaign at send time (campaigns/sandbox.py).
HERALD_TEMPLATE_MAX_OUTPUT = envint("HERALD_TEMPLATE_MAX_OUTPUT", 2 * 1024 * 1024, minimum=1024)
HERALD_TEMPLATE_MAX_LOOP = envint("HERALD_TEMPLATE_MAX_LOOP", 100_000, minimum=100)
# Outgoing webhooks: endpoints resolving to private, loopback or reserved
# addresses are refused unless this is set (no SSRF into the operator's network).
HERALD_WEBHOOK_ALLOW_PRIVATE = envbool("HERALD_WEBHOOK_ALLOW_PRIVATE", False)
HERALD_WEBHOOK_RETRY_FIRST = envint("HERALD_WEBHOOK_RETRY_FIRST", 10, minimum=1)
HERALD_WEBHOOK_RETRY_MAX = envint("HERALD_WEBHOOK_RETRY_MAX", 6 * 3600, minimum=1)
HERALD_WEBHOOK_GIVE_UP_AFTER = envint("HERALD_WEBHOOK_GIVE_UP_AFTER", 3 * 24 * 3600, minimum=60)
HERALD_WEBHOOK_BREAKER_FAILURES = envint("HERALD_WEBHOOK_BREAKER_FAILURES", 5, minimum=1)
HERALD_WEBHOOK_CONCURRENCY = envint("HERALD_WEBHOOK_CONCURRENCY", 4, minimum=1)
HERALD_WEBHOOK_OUTBOX_LIMIT = envint("HERALD_WEBHOOK_OUTBOX_LIMIT", 100_000, minimum=100)
HERALD_WEBHOOK_KEEP_DAYS = envint("HERALD_WEBHOOK_KEEP_DAYS", 7, minimum=1)
# Transactional sends: the most attachment bytes one message may carry.
HERALD_TRANSACTIONAL_MAX_ATTACHMENTS = envint("HERALD_TRANSACTIONAL_MAX_ATTACHMENTS", 10 * 1024 * 1024, minimum=0)
HERALD_TLS_CERT = envstr("HERALD_TLS_CERT", "")
HERALD_TLS_KEY = envstr("HERALD_TLS_KEY", "")
# The SMTP submission server (run_submission_server).
HERALD_SUBMISSION_HOSTNAME = envstr("HERALD_SUBMISSION_HOSTNAME", "localhost")
HERALD_SUBMISSION_MAX_SIZE = envint("HERALD_SUBMISSION_MAX_SIZE", 25 * 1024 * 1024, minimum=1024)
HERALD_SUBMISSION_MAX_RECIPIENTS = envint("HERALD_SUBMISSION_MAX_RECIPIENTS", 500, minimum=1)
HERALD_SUBMISSION_AUTH_FAILURES = envint("HERALD_SUBMISSION_AUTH_FAILURES", 5, minimum=1)
HERALD_SUBMISSION_AUTH_WINDOW = envint("HERALD_SUBMISSION_AUTH_WINDOW", 300, minimum=1)
# Keys of the secrets stored in the database (relay passwords, DKIM keys),
# newest first: the first encrypts, every one decrypts. Empty: derived from
# SECRET_KEY (and its fallbacks). `manage.py rotate_secrets` re-encrypts.
HERALD_ENCRYPTION_KEY = _keys(envsecret("HERALD_ENCRYPTION_KEY", ""))
# "host:port" resolvers for MX look-ups in direct mode; empty uses the system's.
HERALD_DNS_NAMESERVERS = envlist("HERALD_DNS_NAMESERVERS", [])
HERALD_DNS_TIMEOUT = envint("HERALD_DNS_TIMEOUT", 5, minimum=1)
# Direct mode honours MTA-STS (RFC 8461): a domain with an enforcing policy
# gets verified TLS or a deferral. The policy URL (with {domain}) and a CA
# bundle for the policy servers and the MX hosts' certificates (empty: the
# system's, never the relay's HERALD_SMTP_CA_FILE) exist for test servers;
# a policy is cached for its max_age, at most HERALD_MTA_STS_MAX_CACHE seconds.
HERALD_MTA_STS = envbool("HERALD_MTA_STS", True)
HERALD_MTA_STS_POLICY_URL_TEMPLATE = envstr(
    "HERALD_MTA_STS_POLICY_URL_TEMPLATE", "https://mta-sts.{domain}/.well-known/mta-sts.txt"
)
HERALD_MTA_STS_CA_FILE = envstr("HERALD_MTA_STS_CA_FILE", "")
HERALD_MTA_STS_MAX_CACHE = envint("HERALD_MTA_STS_MAX_CACHE", 7 * 86400, minimum=60)
# Send engine: port of recipients' MX hosts in direct mode (25; tests use a
# loopback port), CA bundle for relay certificates (empty: the system's), one
# cap in seconds on every SMTP timeout (0: RFC 5321 4.5.3.2 minimums), sends
# per batch task, and how long a worker's claim on a batch lasts. The lease is
# renewed on a timer while its worker lives, and a dead worker's claims come
# back by its heartbeat within seconds; the lease itself only bounds how long
# rows wait when nobody can tell (Redis lost as well). It must outlast one
# send chunk with every SMTP timeout spent (workers refuse to start otherwise),
# and a row whose claim killed its worker this many times fails.
HERALD_DIRECT_PORT = envint("HERALD_DIRECT_PORT", 25, minimum=1)
# A relay that is down (refused connections, TLS or AUTH failures) hands its
# messages to the other relays of its group and is tried again after this many
# seconds, doubled with each failure in a row up to the maximum.
HERALD_RELAY_RETRY_SECONDS = envfloat("HERALD_RELAY_RETRY_SECONDS", 10.0, minimum=0.1)
HERALD_RELAY_RETRY_MAX_SECONDS = envfloat("HERALD_RELAY_RETRY_MAX_SECONDS", 600.0, minimum=0.1)
HERALD_SMTP_CA_FILE = envstr("HERALD_SMTP_CA_FILE", "")
HERALD_SMTP_TIMEOUT = envint("HERALD_SMTP_TIMEOUT", 0, minimum=0)
# Direct mode: seconds an MX host whose opportunistic STARTTLS failed is sent
# to in plaintext before TLS is tried again (as Postfix's "may" level falls back).
HERALD_TLS_FALLBACK_SECONDS = envint("HERALD_TLS_FALLBACK_SECONDS", 3600, minimum=1)
HERALD_BATCH_SIZE = envint("HERALD_BATCH_SIZE", 200, minimum=1)
# Contacts (by id) per committed chunk of a campaign's audience snapshot: a
# pause or cancel while starting waits for at most one chunk.
HERALD_START_CHUNK = envint("HERALD_START_CHUNK", 20000, minimum=1)
HERALD_SEND_LEASE = envint("HERALD_SEND_LEASE", 1800, minimum=10)
HERALD_SEND_MAX_CLAIMS = envint("HERALD_SEND_MAX_CLAIMS", 5, minimum=1)
HERALD_ORPHAN_GRACE = envint("HERALD_ORPHAN_GRACE", 300, minimum=10)

# Tracking and feedback: soft bounces suppress an address after this many
# within the window; the bounce server's limits; an optional bounce mailbox
# (imaps://user:pass@host:993/INBOX, imap+starttls://…, pop3s://…) polled by beat.
HERALD_SOFT_BOUNCE_LIMIT = envint("HERALD_SOFT_BOUNCE_LIMIT", 3, minimum=1)
HERALD_SOFT_BOUNCE_WINDOW_DAYS = envint("HERALD_SOFT_BOUNCE_WINDOW_DAYS", 30, minimum=1)
HERALD_BOUNCE_MAX_MESSAGE_SIZE = envint("HERALD_BOUNCE_MAX_MESSAGE_SIZE", 10 * 1024 * 1024, minimum=1024)
HERALD_BOUNCE_MAX_CONNECTIONS = envint("HERALD_BOUNCE_MAX_CONNECTIONS", 100, minimum=1)
HERALD_BOUNCE_MAILBOX = envsecret("HERALD_BOUNCE_MAILBOX", "")
HERALD_BOUNCE_MAILBOX_CAFILE = envstr("HERALD_BOUNCE_MAILBOX_CAFILE", "")
HERALD_BOUNCE_MAILBOX_INTERVAL = envint("HERALD_BOUNCE_MAILBOX_INTERVAL", 300, minimum=10)
# Circuit breaker: a campaign pauses itself, and its sending domain's other
# campaigns with it, once at least MIN_SAMPLE of its sends have a final answer
# and hard bounces, complaints or one provider's policy blocks exceed these
# percentages (0.3 % of complaints is the mailbox providers' published limit).
HERALD_BREAKER_MIN_SAMPLE = envint("HERALD_BREAKER_MIN_SAMPLE", 500, minimum=1)
HERALD_BREAKER_HARD_BOUNCE_PERCENT = envfloat("HERALD_BREAKER_HARD_BOUNCE_PERCENT", 5.0, minimum=0.01, maximum=100)
HERALD_BREAKER_COMPLAINT_PERCENT = envfloat("HERALD_BREAKER_COMPLAINT_PERCENT", 0.3, minimum=0.01, maximum=100)
HERALD_BREAKER_POLICY_PERCENT = envfloat("HERALD_BREAKER_POLICY_PERCENT", 10.0, minimum=0.01, maximum=100)
# Warm-up schedules hold their daily volume (rather than grow) when the last
# day's hard bounces or complaints exceed these percentages, and step back
# when they exceed the circuit breaker's.
HERALD_WARMUP_HARD_BOUNCE_PERCENT = envfloat("HERALD_WARMUP_HARD_BOUNCE_PERCENT", 2.0, minimum=0.01, maximum=100)
HERALD_WARMUP_COMPLAINT_PERCENT = envfloat("HERALD_WARMUP_COMPLAINT_PERCENT", 0.1, minimum=0.01, maximum=100)
# Test sends: recipients per user per hour (a token bucket in Redis).
# Signup forms: a post sooner than HERALD_SIGNUP_MIN_SECONDS after the page was
# served is a bot's, one later than HERALD_SIGNUP_FORM_MAX_AGE a stale page's;
# signups per hour are limited per client address and per email address.
# Thank-you redirects may go only to the hosts listed.
HERALD_SIGNUP_MIN_SECONDS = envint("HERALD_SIGNUP_MIN_SECONDS", 2, minimum=0)
HERALD_SIGNUP_FORM_MAX_AGE = envint("HERALD_SIGNUP_FORM_MAX_AGE", 24 * 3600, minimum=60)
HERALD_SIGNUP_LIMIT_PER_IP = envint("HERALD_SIGNUP_LIMIT_PER_IP", 30, minimum=1)
HERALD_SIGNUP_LIMIT_PER_ADDRESS = envint("HERALD_SIGNUP_LIMIT_PER_ADDRESS", 5, minimum=1)
HERALD_SIGNUP_REDIRECT_HOSTS = [h.lower() for h in envlist("HERALD_SIGNUP_REDIRECT_HOSTS", [])]
HERALD_CONFIRM_LINK_DAYS = envint("HERALD_CONFIRM_LINK_DAYS", 7, minimum=1)
HERALD_CONFIRM_RESEND_SECONDS = envint("HERALD_CONFIRM_RESEND_SECONDS", 3600, minimum=0)
HERALD_UNCONFIRMED_PURGE_DAYS = envint("HERALD_UNCONFIRMED_PURGE_DAYS", 30, minimum=1)
HERALD_EXPORT_LINK_HOURS = envint("HERALD_EXPORT_LINK_HOURS", 48, minimum=1)
# Sender of mail the public pages send on their own (the data-export link).
HERALD_PUBLIC_FROM_EMAIL = envstr("HERALD_PUBLIC_FROM_EMAIL", "no-reply@herald.localhost")

HERALD_TEST_SEND_LIMIT = envint("HERALD_TEST_SEND_LIMIT", 50, minimum=1)

EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "127.0.0.1")
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "herald@localhost")

# ESP tracking webhooks (/webhooks/anymail/<esp>/tracking/) exist only when this
# "user:password" is set; each request must carry it as HTTP basic auth. Unset
# (the default), every webhook URL answers 404 (tracking/webhooks_urls.py).
ANYMAIL = {
    "WEBHOOK_SECRET": envsecret("ANYMAIL_WEBHOOK_SECRET", None),
}
# Mailgun signs its webhooks; anymail checks the signature with this key as well.
if envsecret("MAILGUN_WEBHOOK_SIGNING_KEY", ""):
    ANYMAIL["MAILGUN_WEBHOOK_SIGNING_KEY"] = envsecret("MAILGUN_WEBHOOK_SIGNING_KEY", "")

UNFOLD = UNFOLD_THEME

# --- Operator sign-in --------------------------------------------------------
# After HERALD_LOGIN_FAILURE_LIMIT failed sign-ins, a user name and (separately)
# an address are locked out for HERALD_LOGIN_LOCKOUT_MINUTES; a success resets.
AXES_FAILURE_LIMIT = envint("HERALD_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = envint("HERALD_LOGIN_LOCKOUT_MINUTES", 15, minimum=1) / 60  # hours
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "herald.login.locked_out"
AXES_VERBOSE = False
# The name authenticator apps show next to the code.
OTP_TOTP_ISSUER = "Herald"
