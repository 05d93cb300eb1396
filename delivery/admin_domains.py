"""Admin for sending domains: DKIM key generation and the DNS record to publish."""
