"""The starter gallery: responsive templates to start a new one from.

Each starter is a file under templates/email/gallery/ in its format, with the
unsubscribe and preferences links in its footer, and a sample body that shows
what a campaign's content looks like in it (the preview of a template uses
the sample of its format).
"""

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from campaigns import formats

GALLERY_DIR = Path(settings.BASE_DIR) / "templates" / "email" / "gallery"

# What a template's preview puts where its campaigns' body goes, by format. In an MJML
# template {{ content }} stands inside an mj-text, so the body there is HTML too.
SAMPLE_HTML = """<h2>A headline for {{ contact.first_name | default("you") }}</h2>
<p>This is where a campaign's content goes: a few paragraphs, a list or two, and
<a href="https://example.com/article">a link to read more</a>.</p>
<ul>
<li>First point worth making</li>
<li>Second point, just as short</li>
</ul>
"""
SAMPLE_MARKDOWN = """## A headline for {{ contact.first_name | default("you") }}

This is where a campaign's content goes: a few paragraphs, a list or two, and
[a link to read more](https://example.com/article).

- First point worth making
- Second point, just as short
"""
SAMPLE_DIGEST = """<h2><a href="https://example.com/one">The first story of the week</a></h2>
<p>Two lines on why it matters, written for {{ contact.first_name | default("you") }}.</p>
<hr>
<h2><a href="https://example.com/two">A second story</a></h2>
<p>A short summary and <a href="https://example.com/two">a link to the rest</a>.</p>
<hr>
<h2><a href="https://example.com/three">And a third</a></h2>
<p>Digests read best with three to seven items.</p>
"""
SAMPLE_LETTER = """<p>Thank you for reading. This plain letter suits a personal note: a few paragraphs,
no pictures, the way a person writes an email.</p>
<p>Warm regards,<br>The team</p>
"""


def sample_body(fmt):
    return SAMPLE_MARKDOWN if fmt == formats.MARKDOWN else SAMPLE_HTML


@dataclass(frozen=True)
class Starter:
    key: str
    name: str
    format: str
    filename: str
    description: str
    sample: str

    @property
    def format_label(self):
        return dict(formats.CHOICES)[self.format]

    @property
    def source(self):
        return (GALLERY_DIR / self.filename).read_text(encoding="utf-8")


STARTERS = [
    Starter("newsletter", "Newsletter", formats.MJML, "newsletter.mjml",
            "A masthead, the main story and two columns that stack on a phone (MJML).", SAMPLE_HTML),
    Starter("announcement", "Announcement", formats.MJML, "announcement.mjml",
            "One headline, a few lines and a big button (MJML).", SAMPLE_HTML),
    Starter("digest", "Digest", formats.HTML, "digest.html",
            "A list of stories with links, for a weekly round-up (HTML).", SAMPLE_DIGEST),
    Starter("letter", "Plain letter", formats.HTML, "letter.html",
            "A personal note with no images; also a good layout for Markdown (HTML).", SAMPLE_LETTER),
]
BY_KEY = {s.key: s for s in STARTERS}
