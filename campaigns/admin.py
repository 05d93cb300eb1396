# The admin is split by concern: the audience (contacts, lists, imports,
# suppressions, API tokens), the content (templates, campaigns) and the audit log.
from campaigns import admin_audience, admin_audit, admin_content  # noqa: F401
