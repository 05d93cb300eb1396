"""Messages per second per core for render + build of a realistic newsletter.

A ~20 KB HTML newsletter with 10 links and 5 personalised fields, built for
distinct recipients in one process: without DKIM, with RSA-2048 and with
Ed25519 DKIM, beside a naive baseline in the same run (a fresh Django
EmailMultiAlternatives per recipient, as send_mass_mail does, rendering the
same precompiled Jinja templates).

    .venv/bin/python bench/render.py [--messages N] [--baseline N]

Uses an in-memory SQLite database unless BENCH_DATABASE_URL names another
(the rows it needs are created there). Prints figures; asserts nothing.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import benchlib  # noqa: F401  (sets a SECRET_KEY for benchmark processes)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", "sqlite://:memory:")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")

import django  # noqa: E402

django.setup()

from django.core.mail import EmailMultiAlternatives  # noqa: E402
from django.core.management import call_command  # noqa: E402

from campaigns.models import Campaign, Contact, Template  # noqa: E402
from campaigns.rendering import html_env, text_env  # noqa: E402
from delivery import dkim, tokens  # noqa: E402
from delivery.message import _compiled, compile_campaign  # noqa: E402
from delivery.models import SendingDomain  # noqa: E402

LAYOUT = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Herald Weekly</title>
<style>
body { margin: 0; padding: 0; background: #f4f4f7; font-family: Helvetica, Arial, sans-serif; }
.wrapper { width: 100%; background: #f4f4f7; }
.content { width: 600px; margin: 0 auto; background: #ffffff; }
h1 { font-size: 24px; color: #222222; margin: 0 0 12px; }
h2 { font-size: 18px; color: #333333; margin: 18px 0 8px; }
p { font-size: 15px; line-height: 22px; color: #444444; margin: 0 0 12px; }
a { color: #1a73e8; text-decoration: underline; }
.button { display: inline-block; padding: 10px 18px; background: #1a73e8; color: #ffffff; border-radius: 4px; }
.footer p { font-size: 12px; color: #888888; }
@media (max-width: 620px) { .content { width: 100% !important; } }
</style></head>
<body>
<table class="wrapper" role="presentation" cellpadding="0" cellspacing="0">
<tr><td>
<table class="content" role="presentation" cellpadding="0" cellspacing="0">
<tr><td style="padding: 24px">
{{ content }}
</td></tr>
<tr><td class="footer" style="padding: 24px">
<p>You receive this because you subscribed with {{ contact.email }}.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> | <a href="{{ view_in_browser_url }}">View in your browser</a></p>
</td></tr>
</table>
</td></tr>
</table>
</body></html>
"""

ARTICLE = """
<h2>{title}</h2>
<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit. Integer posuere erat a ante venenatis dapibus,
posuere velit aliquet. Cras mattis consectetur purus sit amet fermentum. Donec ullamcorper nulla non metus
auctor fringilla. Vestibulum id ligula porta felis euismod semper. Maecenas faucibus mollis interdum.</p>
<p>Aenean lacinia bibendum nulla sed consectetur. Nullam quis risus eget urna mollis ornare vel eu leo.
Etiam porta sem malesuada magna mollis euismod. Curabitur blandit tempus porttitor. Sed posuere consectetur
est at lobortis. Morbi leo risus, porta ac consectetur ac, vestibulum at eros. Praesent commodo cursus magna,
vel scelerisque nisl consectetur et. Donec sed odio dui. Duis mollis, est non commodo luctus, nisi erat
porttitor ligula, eget lacinia odio sem nec elit. Nulla vitae elit libero, a pharetra augue.</p>
<p>Fusce dapibus, tellus ac cursus commodo, tortor mauris condimentum nibh, ut fermentum massa justo sit amet
risus. Vivamus sagittis lacus vel augue laoreet rutrum faucibus dolor auctor. Cum sociis natoque penatibus.</p>
<p><a class="button" href="https://news.example.com/articles/{n}?utm_source=herald&amp;utm_medium=email">Read more</a></p>
"""

BODY = (
    "<h1>Hello {{ contact.first_name | default('there') }}!</h1>\n"
    "<p>Here is this week's digest for {{ contact.attributes.city | default('your city') }}, "
    "chosen for {{ contact.attributes.plan | default('free') }} members like {{ contact.last_name }}.</p>\n"
    + "".join(ARTICLE.format(title=f"Story number {n}", n=n) for n in range(1, 11))
)


def setup_rows():
    if os.environ["DATABASE_URL"].startswith("sqlite"):
        call_command("migrate", verbosity=0)
    layout = Template.objects.create(name=f"bench layout {time.time()}", html=LAYOUT)
    campaigns = {}
    for label, domain, algorithm in (("no DKIM", "example.com", None), ("RSA-2048", "rsa.example.com", dkim.RSA),
                                     ("Ed25519", "ed.example.com", dkim.ED25519)):
        if algorithm:
            private, public = dkim.generate_key(algorithm)
            SendingDomain.objects.update_or_create(domain=domain, defaults={
                "selector": "bench", "algorithm": algorithm, "private_key": private, "public_key": public})
        campaigns[label] = Campaign.objects.create(
            name=f"bench {label}", subject="{{ contact.first_name }}, your weekly digest", from_name="Herald Weekly",
            from_email=f"news@{domain}", reply_to=f"editor@{domain}", html_body=BODY, template=layout)
    return campaigns


class FakeSend:
    def __init__(self, pk, email):
        self.pk = pk
        self.email = email


def contacts(n):
    return [Contact(email=f"reader{i}@example.org", first_name=f"Reader{i}", last_name=f"Nr{i}",
                    attributes={"city": ["Oxford", "Köln", "Lyon"][i % 3], "plan": "gold"}) for i in range(n)]


def measure(fn, people):
    """(messages per CPU second of this process, mean size). CPU time, not wall time: the
    figure is per core, and other processes on a shared machine do not count against it."""
    fn(0, people[0])  # warm the caches of this campaign
    start = time.process_time()
    size = 0
    for i, person in enumerate(people, start=1):
        size += fn(i, person)
    elapsed = time.process_time() - start
    return len(people) / elapsed, size / len(people)


def naive(campaign):
    subject = text_env.from_string(campaign.subject)
    html = html_env.from_string(campaign.template.html.replace("{{ content }}", campaign.html_body))

    def build(i, person):
        ctx = {"contact": person, "unsubscribe_url": tokens.unsubscribe_url(i), "view_in_browser_url": tokens.view_url(i)}
        body = html.render(ctx)
        msg = EmailMultiAlternatives(subject.render(ctx), "Plain text version", f"Herald Weekly <{campaign.from_email}>",
                                     [person.email], headers={"List-Unsubscribe": f"<{ctx['unsubscribe_url']}>"})
        msg.attach_alternative(body, "text/html")
        return len(msg.message().as_bytes())

    return build


def fast(campaign):
    _compiled.clear()
    compiled = compile_campaign(campaign)

    def build(i, person):
        return len(compiled.build(FakeSend(i, person.email), person).data)

    return build


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per fast run (default 20000)")
    parser.add_argument("--baseline", type=int, default=1000, help="messages for the naive baseline (default 1000)")
    args = parser.parse_args()
    campaigns = setup_rows()
    people = contacts(max(args.messages, args.baseline))
    html_size = len(compile_campaign(campaigns["no DKIM"]).content.html.render(
        compile_campaign(campaigns["no DKIM"]).context(1, people[0])))
    print(f"newsletter: {html_size / 1024:.1f} KB of HTML per recipient, 10 tracked links, 5 personalised fields")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; rates are messages per CPU second")
    base_rate, base_size = measure(naive(campaigns["no DKIM"]), people[:args.baseline])
    print(f"{'naive EmailMultiAlternatives':32s} {base_rate:9.0f} msg/s  ({base_size / 1024:.1f} KB/msg)")
    targets = {"no DKIM": 10000, "RSA-2048": 1000, "Ed25519": 5000}
    for label, campaign in campaigns.items():
        n = args.messages if label != "RSA-2048" else max(args.messages // 5, 1)
        rate, size = measure(fast(campaign), people[:n])
        verdict = "meets" if rate >= targets[label] else "BELOW"
        print(f"{'herald ' + label:32s} {rate:9.0f} msg/s  ({size / 1024:.1f} KB/msg)  "
              f"x{rate / base_rate:.1f} baseline; target {targets[label]} ({verdict})")


if __name__ == "__main__":
    main()
