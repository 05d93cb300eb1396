# The admin is split by concern: the audience (contacts, lists, imports,
# suppressions, API tokens) and the content (templates, campaigns).
from campaigns import admin_audience, admin_content  # noqa: F401
