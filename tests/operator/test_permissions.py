"""Who may do what: only staff reach the admin; editors edit content, senders also send."""

import pytest
from django.contrib.auth.models import Group, User

from campaigns.models import ApiToken, Campaign

pytestmark = pytest.mark.django_db


def person(username, *groups, staff=True):
    user = User.objects.create_user(username, password="a long passphrase 42", is_staff=staff)
    user.groups.set(Group.objects.filter(name__in=groups))
    return user


def test_the_two_operator_groups_exist_after_migrating():
    editors = set(Group.objects.get(name="Content editors").permissions.values_list("codename", flat=True))
    senders = set(Group.objects.get(name="Senders").permissions.values_list("codename", flat=True))
    for codename in ("add_campaign", "change_campaign", "view_campaign", "change_template", "add_contact",
                     "view_mailinglist", "add_import"):
        assert codename in editors
    assert "send_campaign" not in editors
    assert senders == editors | {"send_campaign", "view_event", "view_suppression", "add_suppression"}
    assert not any(c.startswith("delete_") for c in senders)


def test_a_user_who_is_not_staff_is_sent_to_the_login_page(client):
    client.force_login(person("visitor", "Senders", staff=False))
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_an_editor_may_edit_campaigns_but_not_send_them(client, newsletter):
    editor = person("erin", "Content editors")
    assert editor.has_perms(["campaigns.change_campaign", "campaigns.change_template", "campaigns.add_contact"])
    assert not editor.has_perm("campaigns.send_campaign")

    _, token = ApiToken.issue(editor)
    response = client.post(f"/api/v1/campaigns/{newsletter.pk}/send", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 403
    assert "send_campaign" in response.json()["detail"]
    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.DRAFT


def test_an_editor_cannot_reach_the_admin_send_page(client, newsletter):
    client.force_login(person("erin", "Content editors"))
    assert client.get(f"/admin/herald/campaigns/{newsletter.pk}/send/").status_code == 403
    assert client.post(f"/admin/herald/campaigns/{newsletter.pk}/send/").status_code == 403
    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.DRAFT


def test_a_sender_may_schedule_through_the_api(client, newsletter):
    _, token = ApiToken.issue(person("sam", "Senders"))
    response = client.post(f"/api/v1/campaigns/{newsletter.pk}/schedule", {"scheduled_at": "2031-05-01T09:00:00+02:00"},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.SCHEDULED
    assert newsletter.scheduled_at.isoformat() == "2031-05-01T07:00:00+00:00"  # stored in UTC
