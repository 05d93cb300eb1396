# The send engine (relays, throttles, sends) and sending domains (DKIM) each
# have their own admin module.
from delivery import admin_domains, admin_engine  # noqa: F401
