"""Staff-only campaign lifecycle views, mounted under /admin/herald/."""

from django.urls import path

from delivery import admin_views

app_name = "delivery-admin"

urlpatterns = [
    path("campaigns/<int:campaign_id>/send/", admin_views.campaign_send, name="campaign-send"),
    path("campaigns/<int:campaign_id>/pause/", admin_views.campaign_pause, name="campaign-pause"),
    path("campaigns/<int:campaign_id>/resume/", admin_views.campaign_resume, name="campaign-resume"),
    path("campaigns/<int:campaign_id>/cancel/", admin_views.campaign_cancel, name="campaign-cancel"),
    path("campaigns/<int:campaign_id>/progress/", admin_views.campaign_progress, name="campaign-progress"),
]
