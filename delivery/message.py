"""Building the bytes of each campaign message.

Interface used by the send engine (kept stable):

    compiled = compile_campaign(campaign)      # once per campaign per process
    built = compiled.build(send, contact)      # per recipient -> BuiltMessage

This first version builds a fresh EmailMessage per recipient; the content work
replaces it with a build-once-and-splice path producing the same bytes.
"""

import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate

from jinja2.sandbox import SandboxedEnvironment

from delivery import tokens

_env = SandboxedEnvironment(autoescape=False)


@dataclass
class BuiltMessage:
    mail_from: str  # envelope sender (VERP)
    rcpt: str
    data: bytes
    message_id: str


class CompiledCampaign:
    def __init__(self, campaign):
        self.campaign = campaign
        self.subject = _env.from_string(campaign.subject)
        self.html = _env.from_string(campaign.html_body or "")
        self.text = _env.from_string(campaign.text_body or "")
        self.domain = campaign.from_email.rpartition("@")[2] or "localhost"

    def build(self, send, contact) -> BuiltMessage:
        ctx = {
            "contact": contact,
            "unsubscribe_url": tokens.unsubscribe_url(send.pk),
            "view_in_browser_url": tokens.view_url(send.pk),
        }
        msg = EmailMessage(policy=SMTP)
        message_id = f"<{uuid.uuid4().hex}@{self.domain}>"
        msg["Subject"] = " ".join(self.subject.render(ctx).split())
        msg["From"] = formataddr((self.campaign.from_name, self.campaign.from_email))
        msg["To"] = send.email
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = message_id
        msg["List-Unsubscribe"] = f"<{tokens.unsubscribe_url(send.pk)}>, <mailto:{tokens.unsubscribe_mailto(send.pk)}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(self.text.render(ctx) or "")
        msg.add_alternative(self.html.render(ctx), subtype="html")
        return BuiltMessage(tokens.verp_address(send.pk), send.email, msg.as_bytes(), message_id.strip("<>"))


def compile_campaign(campaign) -> CompiledCampaign:
    return CompiledCampaign(campaign)
