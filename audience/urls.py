from django.urls import path

from audience import views

urlpatterns = [
    path("c/<str:token>/", views.confirm, name="signup-confirm"),
    path("p/<str:token>/", views.preference_centre, name="preferences"),
    path("export/<str:token>/", views.export_download, name="data-export"),
    path("<slug:slug>/", views.signup_form, name="signup-form"),
]
