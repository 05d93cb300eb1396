"""Telling people from machines: privacy proxies that fetch every image, scanners that fetch every link."""

import re

# Apple Mail Privacy Protection fetches through a proxy whose user agent is a
# bare WebKit string with no browser version; other prefetchers name themselves.
_MACHINE_AGENTS = re.compile(
    r"^Mozilla/5\.0$"
    r"|^Mozilla/5\.0 \(Macintosh; Intel Mac OS X [\d_]+\) AppleWebKit/[\d.]+ \(KHTML, like Gecko\)$"
    r"|YahooMailProxy|Barracuda|Mimecast|Proofpoint|SafeLinks|Microsoft Office Protection|Symantec|Trend ?Micro"
    r"|python-requests|curl/|Wget|Go-http-client|HeadlessChrome|bot\b|spider|crawler|preview",
    re.I,
)

# A fetch this soon after the message left is a prefetch or a scan, not a reader.
SECONDS_AFTER_SENT = 5
# Several links of one message clicked within this span: a scanner walking them.
CLICK_BURST_SECONDS = 1


def is_machine_agent(user_agent: str) -> bool:
    return not user_agent or bool(_MACHINE_AGENTS.search(user_agent))
