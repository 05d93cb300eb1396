"""Admin for relays (with the check button), domain throttles and the send ledger."""
