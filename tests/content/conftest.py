import pytest

from campaigns.models import Campaign, Contact, Template


@pytest.fixture
def alice(db):
    return Contact.objects.create(email="alice@example.com", first_name="Alice", last_name="Liddell",
                                  attributes={"city": "Oxford", "plan": "gold"})


@pytest.fixture
def layout(db):
    return Template.objects.create(
        name="Plain layout",
        html="<html><head><style>p { color: #333; }</style></head><body>{{ content }}"
             '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>',
    )


@pytest.fixture
def campaign(db, layout):
    return Campaign.objects.create(
        name="Spring news",
        subject="Hello {{ contact.first_name }}",
        from_name="Herald News",
        from_email="news@example.com",
        reply_to="replies@example.com",
        html_body='<p>Dear {{ contact.first_name | default("friend") }} from {{ contact.attributes.city }},</p>'
                  '<p><a href="https://example.com/spring">Read the spring issue</a></p>',
        template=layout,
    )


class FakeSend:
    """What build() reads of a Send: its id and address (the engine passes real rows)."""

    def __init__(self, pk, email):
        self.pk = pk
        self.email = email
