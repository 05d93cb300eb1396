"""The statistics, events and suppressions API."""

import csv
import io

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile

from campaigns.models import ApiToken, Contact, Suppression
from delivery import tokens
from delivery.models import Send
from tests.tracking import samples
from tests.tracking.conftest import make_send
from tracking.feedback import process_message
from tracking.models import Event

pytestmark = pytest.mark.django_db

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


@pytest.fixture
def api(client):
    user = User.objects.create_user("ops", password="x")
    user.user_permissions.set(Permission.objects.filter(
        codename__in=["view_campaign", "view_event", "view_suppression", "add_suppression", "delete_suppression"]))
    _, token = ApiToken.issue(user)

    class Api:
        def get(self, path, **params):
            return client.get(f"/api/v1{path}", params, HTTP_AUTHORIZATION=f"Bearer {token}")

        def post(self, path, data=None, **kwargs):
            return client.post(f"/api/v1{path}", data, HTTP_AUTHORIZATION=f"Bearer {token}", **kwargs)

        def delete(self, path):
            return client.delete(f"/api/v1{path}", HTTP_AUTHORIZATION=f"Bearer {token}")

    return Api()


def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


@pytest.fixture
def activity(client, campaign, alice_send, bob_send):
    """Alice opens (and her privacy proxy too) and clicks; Bob hard-bounces; Carol is deferred."""
    carol = Contact.objects.create(email="carol@example.org")
    make_send(campaign, carol, sent_ago=None, status=Send.Status.DEFERRED)
    client.get(local(tokens.open_url(alice_send.pk)), HTTP_USER_AGENT=BROWSER)
    client.get(local(tokens.open_url(alice_send.pk)), HTTP_USER_AGENT=BROWSER)
    client.get(local(tokens.open_url(alice_send.pk)), HTTP_USER_AGENT="Mozilla/5.0")
    client.get(local(tokens.click_url(alice_send.pk, 1)), HTTP_USER_AGENT=BROWSER)
    verp = tokens.verp_address(bob_send.pk)
    process_message(samples.postfix(verp, bob_send.email, bob_send.message_id), verp)
    return campaign


def test_campaign_stats(api, activity):
    response = api.get(f"/campaigns/{activity.pk}/stats")
    assert response.status_code == 200
    stats = response.json()
    o, e = stats["outcomes"], stats["engagement"]
    assert stats["recipients"] == 3
    # Bob's message was accepted, then bounced by a DSN: not delivered, and not a bounce at send time.
    assert o["delivered"] == {"label": "Delivered", "count": 1, "rate": 0.3334}
    assert o["bounced_after_delivery"]["count"] == 1 and o["bounced"]["count"] == 0
    assert o["deferred"]["count"] == 1 and stats["deferred_at_least_once"]["count"] == 0
    assert sum(f["count"] for f in o.values()) == 3 and round(sum(f["rate"] for f in o.values()), 6) == 1
    assert e["human_opens"] == {"label": "Opened (people)", "count": 1, "rate": 1.0}
    assert e["machine_opens"]["count"] == 1
    assert e["unique_clicks"]["count"] == 1
    assert e["complaints"]["count"] == 0 and e["unsubscribes"]["count"] == 0
    assert stats["totals"]["opens"] == 3
    assert [(link["index"], link["clicks"]) for link in stats["links"]] == [(0, 0), (1, 1)]
    domains = {d["domain"]: d for d in stats["domains"]}
    assert domains["example.net"]["bounced_after_delivery"] == 1 and domains["example.net"]["delivered"] == 0
    assert domains["example.org"]["deferred"] == 1 and domains["example.org"]["delivered"] == 1
    assert domains["example.org"]["avg_latency_seconds"] is not None

    timeline = stats["timeline"]
    assert (timeline["unit"], timeline["time_zone"]) == ("minute", "UTC")  # sent an hour ago, opened now

    def total(name):
        return sum(slot[name] for slot in timeline["buckets"])

    # Human opens only (the proxy's fetch is left out), in whichever bucket they fell.
    assert (total("opens"), total("clicks"), total("bounces"), total("sent")) == (2, 1, 1, 2)


def test_stats_of_an_unknown_campaign_is_404_and_needs_a_token(api, client):
    assert api.get("/campaigns/999999/stats").status_code == 404
    assert client.get("/api/v1/campaigns/1/stats").status_code == 401


def test_events_filtered_by_campaign_type_and_address(api, activity):
    opens = api.get("/events", campaign=activity.pk, type="open").json()
    assert opens["count"] == 3 and {e["email"] for e in opens["items"]} == {"alice@example.org"}
    bob = api.get("/events", address="BOB@example.net").json()
    assert [e["type"] for e in bob["items"]] == ["bounce"] and bob["items"][0]["status"] == "5.1.1"
    bad = api.get("/events", type="explosion")
    assert bad.status_code == 422 and "type" in bad.json()["detail"]


def test_suppressions_add_list_remove(api):
    created = api.post("/suppressions", {"email": "Dave@Example.com", "reason": "manual"}, content_type="application/json")
    assert created.status_code == 201 and created.json()["email"] == "Dave@Example.com"
    again = api.post("/suppressions", {"email": "dave@example.com"}, content_type="application/json")
    assert again.status_code == 200
    listed = api.get("/suppressions", q="dave").json()
    assert listed["count"] == 1
    bad = api.post("/suppressions", {"email": "not-an-address"}, content_type="application/json")
    assert bad.status_code == 422 and "email" in bad.json()["detail"]
    bad_reason = api.post("/suppressions", {"email": "e@example.com", "reason": "dislike"}, content_type="application/json")
    assert bad_reason.status_code == 422 and "reason" in bad_reason.json()["detail"]
    assert api.delete("/suppressions/DAVE@example.com").status_code == 204
    assert api.delete("/suppressions/dave@example.com").status_code == 404
    assert not Suppression.objects.exists()


def test_suppressions_csv_import_and_export(api):
    Suppression.objects.create(email="old@example.com", reason="complaint")
    data = (b"email;reason;detail\n"
            b"new1@example.com;hard_bounce;from the old system\n"
            b"OLD@example.com;manual;\n"
            b"broken-address;manual;\n"
            b"new2@example.com;;\n"
            b"new3@example.com;dislike;\n")
    upload = SimpleUploadedFile("suppressions.csv", data, content_type="text/csv")
    result = api.post("/suppressions/import", {"file": upload}).json()
    assert (result["added"], result["existing"], result["invalid"]) == (2, 1, 2)
    assert result["errors"][0].startswith("row 4, column 'email', value 'broken-address': ")
    assert result["errors"][1].startswith("row 6, column 'reason', value 'dislike': ")
    assert Suppression.objects.get(email_key="new2@example.com").reason == "manual"
    exported = api.get("/suppressions/export")
    assert exported["Content-Type"].startswith("text/csv")
    lines = exported.content.decode().splitlines()
    assert lines[0] == "email,reason,detail,created_at"
    assert [line.split(",")[0] for line in lines[1:]] == ["new1@example.com", "new2@example.com", "old@example.com"]


def import_file(api, data: bytes):
    return api.post("/suppressions/import", {"file": SimpleUploadedFile("s.csv", data, content_type="text/csv")})


def test_suppressions_import_reads_cr_line_ends_and_stray_crs(api):
    mac = import_file(api, b"email,reason\rann@example.com,complaint\rbad address,manual\rbob@example.com,\r")
    assert mac.status_code == 200, mac.content
    assert (mac.json()["added"], mac.json()["invalid"]) == (2, 1)
    assert mac.json()["errors"][0].startswith("row 3, column 'email', value 'bad address': ")
    stray = import_file(api, b"email,reason,detail\r\ncarl@example.com\r,hard_bounce,550 user\runknown\r\n")
    assert stray.status_code == 200, stray.content
    assert Suppression.objects.get(email_key="carl@example.com").detail == "550 user unknown"
    assert Suppression.objects.get(email_key="ann@example.com").reason == "complaint"


def test_suppressions_import_skips_rows_of_only_delimiters_and_counts_repeats_as_existing(api):
    data = b"email,reason,detail\n,,\ndave@example.com,,\n;;\n,,\nDAVE@example.com,,\n"
    result = import_file(api, data).json()
    assert (result["added"], result["existing"], result["invalid"]) == (1, 1, 1)  # ";;" has no address
    assert [e.split(": ")[0] for e in result["errors"]] == ["row 4, column 'email', value ';;'"]


def test_suppressions_import_streams_a_file_larger_than_a_batch(api):
    Suppression.objects.create(email="user4000@example.com", reason="complaint")
    rows = b"".join(b"user%d@example.com\n" % (i % 4500) for i in range(5000))
    result = import_file(api, b"email\n" + rows).json()
    assert (result["added"], result["existing"], result["invalid"]) == (4499, 501, 0)
    assert Suppression.objects.count() == 4500
    assert Suppression.objects.get(email_key="user4000@example.com").reason == "complaint"


def test_suppressions_import_over_the_size_limit_is_a_413_naming_it(api, settings):
    Suppression.objects.create(email="kept@example.com", reason="complaint")
    settings.HERALD_IMPORT_MAX_BYTES = 50
    response = import_file(api, b"email\n" + b"".join(b"user%d@example.com\n" % i for i in range(10)))
    assert response.status_code == 413
    assert "HERALD_IMPORT_MAX_BYTES" in response.json()["detail"] and "50 bytes" in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "file"
    assert list(Suppression.objects.values_list("email", flat=True)) == ["kept@example.com"]


def test_a_file_that_is_not_text_is_refused_whole_naming_the_row(api):
    Suppression.objects.create(email="kept@example.com", reason="complaint")
    rows = b"".join(b"user%d@example.com\n" % i for i in range(9000))
    response = import_file(api, b"email\n" + rows + b"bin\x00ary@example.com\n")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("file: Row 9002 contains binary data (a NUL byte) at byte ")
    assert list(Suppression.objects.values_list("email", flat=True)) == ["kept@example.com"]
    assert import_file(api, b"").status_code == 422
    utf16 = import_file(api, "email\nann@example.com\n".encode("utf-16"))
    assert utf16.status_code == 422 and "UTF-16" in utf16.json()["detail"]


def test_suppressions_export_neutralises_remote_text_and_imports_back(api):
    Suppression.objects.create(email="eve@example.com", reason="hard_bounce",
                               detail='=HYPERLINK("http://evil.example/","click")')
    Suppression.objects.create(email="+tag@example.com", reason="manual", detail="@SUM(1)")
    exported = api.get("/suppressions/export").content
    rows = list(csv.reader(io.StringIO(exported.decode())))
    assert rows[1][:3] == ["'+tag@example.com", "manual", "'@SUM(1)"]
    assert rows[2][:3] == ["eve@example.com", "hard_bounce", "'=HYPERLINK(\"http://evil.example/\",\"click\")"]
    Suppression.objects.all().delete()
    result = import_file(api, exported).json()
    assert (result["added"], result["invalid"]) == (2, 0)
    assert Suppression.objects.get(email_key="eve@example.com").detail == '=HYPERLINK("http://evil.example/","click")'
    assert Suppression.objects.get(email_key="+tag@example.com").detail == "@SUM(1)"


def test_events_list_is_paginated(api, alice_send):
    for n in range(5):
        Event.objects.create(type="open", send=alice_send, campaign_id=alice_send.campaign_id, email=alice_send.email,
                             key=f"k{n}")
    page = api.get("/events", limit=2, offset=0).json()
    assert page["count"] == 5 and len(page["items"]) == 2


def test_page_bounds_are_checked(api):
    assert api.get("/events", limit=5000).status_code == 422
    assert api.get("/suppressions", offset=-1).status_code == 422
    assert api.get("/events", limit=9223372036854775808).status_code == 422
