"""The authenticated SMTP submission server: applications and mail clients send
single messages through Herald, into the same ledger and engine as campaigns."""
