"""The content API: templates and campaigns, 422s that name field and line, previews and test sends."""

import pytest
from django.contrib.auth.models import Permission, User

from campaigns.models import ApiToken, Campaign, MailingList
from delivery.models import Relay, Send


@pytest.fixture
def editor(db):
    user = User.objects.create_user("editor", password="x")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="campaigns",
                                                        codename__regex=r"_(campaign|template)$"))
    return user


@pytest.fixture
def api(client, editor):
    token = ApiToken.issue(editor)[1]

    class Api:
        def call(self, method, path, data=None):
            kwargs = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
            if method == "get":
                return client.get(f"/api/v1{path}", data or {}, **kwargs)
            return getattr(client, method)(f"/api/v1{path}", data, content_type="application/json", **kwargs)

        def __getattr__(self, method):
            return lambda path, data=None: self.call(method, path, data)

    return Api()


CAMPAIGN = {"name": "Spring", "subject": "Hello {{ contact.first_name }}", "from_name": "Herald",
            "from_email": "news@example.com", "html_body": "<p>Hi {{ contact.first_name }}</p>"}


def test_requires_a_token(client, db):
    assert client.get("/api/v1/campaigns").status_code == 401


def test_template_crud_and_syntax_errors(api):
    bad = api.post("/templates", {"name": "L", "html": "<html>\n<body>\n{{ content }\n</body></html>"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0] == {"field": "html", "line": 3, "message": bad.json()["errors"][0]["message"]}
    assert bad.json()["detail"].startswith("html, line 3: ")
    no_marker = api.post("/templates", {"name": "L", "html": "<p>nothing</p>"})
    assert no_marker.status_code == 422 and "{{ content }}" in no_marker.json()["detail"]
    created = api.post("/templates", {"name": "L", "html": "<body>{{ content }}</body>"})
    assert created.status_code == 201
    tid = created.json()["id"]
    assert api.post("/templates", {"name": "L", "html": "<body>{{ content }}</body>"}).status_code == 409
    assert api.patch(f"/templates/{tid}", {"text": "{{ content }}\n--\nHerald"}).json()["text"].endswith("Herald")
    campaign = api.post("/campaigns", CAMPAIGN | {"template_id": tid}).json()
    assert api.delete(f"/templates/{tid}").status_code == 409, "a template in use is kept"
    api.delete(f"/campaigns/{campaign['id']}")
    assert api.delete(f"/templates/{tid}").status_code == 204


def test_campaign_create_and_detail_with_counts(api, db):
    news = MailingList.objects.create(name="News")
    response = api.post("/campaigns", CAMPAIGN | {"lists": [news.pk]})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "draft" and body["lists"] == [news.pk]
    campaign = Campaign.objects.get(pk=body["id"])
    Send.objects.create(campaign=campaign, email="a@example.com", domain="example.com", status="sent")
    Send.objects.create(campaign=campaign, email="b@example.com", domain="example.com", status="sent")
    Send.objects.create(campaign=campaign, email="c@example.com", domain="example.com", status="bounced")
    detail = api.get(f"/campaigns/{campaign.pk}").json()
    assert detail["counts"] == {"queued": 0, "sending": 0, "sent": 2, "deferred": 0, "bounced": 1, "failed": 0,
                                "cancelled": 0, "skipped": 0}
    assert {"status", "status_reason", "total"} <= detail.keys()
    assert [c["id"] for c in api.get("/campaigns").json()] == [campaign.pk]


@pytest.mark.parametrize("change,field,line", [
    ({"html_body": "<p>ok</p>\n<p>{% if x %}never closed</p>"}, "html_body", 2),
    ({"subject": "Hi {{ contact.first_name"}, "subject", 1),
    ({"subject": "Hi\r\nBcc: victim@example.net"}, "subject", None),
    ({"from_email": "not an address"}, "from_email", None),
    ({"reply_to": "r@example.com\nBcc: x@y.z"}, "reply_to", None),
    ({"html_body": "{{ ''.__class__.__mro__ }}"}, "html_body", 1),
    ({"lists": [999999]}, "lists", None),
])
def test_campaign_errors_name_field_and_line(api, change, field, line):
    response = api.post("/campaigns", CAMPAIGN | change)
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["field"] == field and error["line"] == line
    assert Campaign.objects.count() == 0


def test_patch_validates_and_refuses_while_sending(api):
    cid = api.post("/campaigns", CAMPAIGN).json()["id"]
    assert api.patch(f"/campaigns/{cid}", {"subject": "New {{ contact.email }}"}).json()["subject"] == "New {{ contact.email }}"
    assert api.patch(f"/campaigns/{cid}", {"html_body": "{% for %}"}).status_code == 422
    assert Campaign.objects.get(pk=cid).subject == "New {{ contact.email }}", "nothing stored is lost"
    Campaign.objects.filter(pk=cid).update(status="sending")
    assert api.patch(f"/campaigns/{cid}", {"subject": "x"}).status_code == 409
    assert api.delete(f"/campaigns/{cid}").status_code == 409


def test_preview_shows_parts_headers_and_missing_variables(api, alice):
    cid = api.post("/campaigns", CAMPAIGN | {"html_body": "<p>{{ contact.first_name }} of {{ contact.attributes.team }}</p>"
                                                           '<a href="https://example.com/x">x</a>'}).json()["id"]
    preview = api.get(f"/campaigns/{cid}/preview", {"contact_id": alice.pk}).json()
    assert preview["subject"] == "Hello Alice"
    assert "Alice of" in preview["html"] and "Alice of" in preview["text"]
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in preview["headers"]
    assert preview["missing"] == ["contact.attributes.team"]
    assert api.get(f"/campaigns/{cid}/links").json() == [{"index": 0, "url": "https://example.com/x"}]
    assert api.get(f"/campaigns/{cid}/preview", {"contact_id": 999999}).status_code == 404


def test_test_send_through_the_relay(api, sink):
    Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security="none")
    cid = api.post("/campaigns", CAMPAIGN).json()["id"]
    response = api.post(f"/campaigns/{cid}/test", {"addresses": ["a@example.com", "nope"]})
    assert response.status_code == 200
    assert [(r["address"], r["ok"]) for r in response.json()] == [("a@example.com", True), ("nope", False)]
    sink.wait_for(1, timeout=10)
    too_many = api.post(f"/campaigns/{cid}/test", {"addresses": [f"a{i}@example.com" for i in range(11)]})
    assert too_many.status_code == 422


def test_permissions_are_required(client, db):
    user = User.objects.create_user("viewer", password="x")
    token = ApiToken.issue(user)[1]
    response = client.post("/api/v1/campaigns", CAMPAIGN, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 403
