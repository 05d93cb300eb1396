"""Signals the engine sends about what it learned at send time.

``tracking`` listens and records Events; the engine never imports tracking.
"""

from django.dispatch import Signal

# Sent after a Send's final outcome is written back. kwargs: send (a Send),
# outcome ("bounced" | "failed" | "deferred" | "sent"), code (int|None), reply (str).
send_outcome = Signal()
