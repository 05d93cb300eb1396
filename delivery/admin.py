# The send engine (relays, throttles, sends), sending domains (DKIM) and warm-up schedules each
# have their own admin module.
from delivery import admin_domains, admin_engine, admin_warmup  # noqa: F401
