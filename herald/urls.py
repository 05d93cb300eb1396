from django.contrib import admin
from django.urls import include, path

from herald import login, timezones
from herald.api import api
from tracking import webhooks_urls

login.install(admin.site)
admin.site.index_title = "Dashboard"

urlpatterns = [
    # Campaign lifecycle pages; before admin/ so the admin site does not claim them.
    path("admin/herald/", include("delivery.admin_urls")),
    path("admin/herald/", include("delivery.admin_operator")),
    path("admin/herald/", include("campaigns.admin_import_preview")),
    path("admin/herald/", include("segments.admin_urls")),
    path("admin/herald/", include("herald.login")),
    path("admin/herald/", include("audience.admin")),
    path("admin/herald/", include(timezones.urlpatterns)),
    path("admin/herald/reports/", include("tracking.admin_reports")),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("t/", include("tracking.urls")),
    # Signup forms, confirmation and the preference centre.
    path("s/", include("audience.urls")),
]
# ESP tracking webhooks, e.g. /webhooks/anymail/amazon_ses/tracking/: only with ANYMAIL_WEBHOOK_SECRET set.
urlpatterns += webhooks_urls.urlpatterns()
