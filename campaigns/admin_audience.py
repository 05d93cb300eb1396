"""Admin for contacts, lists, subscriptions, imports, suppressions and API tokens."""
