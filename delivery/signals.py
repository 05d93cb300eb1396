"""Signals the engine sends about what it learned at send time.

``tracking`` listens and records Events; the engine never imports tracking.
"""

from django.dispatch import Signal

# Sent after a Send's final outcome is written back. kwargs: send (a Send),
# outcome ("bounced" | "failed" | "deferred" | "sent" | "skipped"), code (int|None), reply (str).
# "skipped": a submitted message's recipient was suppressed and never sent; reply says why.
send_outcome = Signal()

# Sent before a paused campaign resumes. kwargs: campaign (a Campaign),
# acknowledge (bool: the operator confirmed what paused it). A receiver that
# must keep the campaign paused raises lifecycle.AcknowledgementRequired.
resuming = Signal()
