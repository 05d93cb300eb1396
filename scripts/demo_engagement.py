"""The demo campaign's recipients, played over HTTP: some open, some click, a few unsubscribe.

Used by scripts/demo_campaign.py once the campaign has finished. Each played
recipient does with the message the sink received what a person (or their
mail provider) does: the tracking URLs are read out of that message and
fetched from the demo's web server, so the statistics page shows what the
real /t/ endpoints recorded. Who plays which part depends only on the
contact's number (reader00042 is 42), so every run plays the same parts.

Out of every thousand contacts:
  150  have the pixel fetched by a mail privacy proxy (Apple Mail Privacy
       Protection, Yahoo's image proxy): machine opens
  300  open the message in a mail client; 60 of them click a link, 40 open
       it a second time
    5  press their mail client's unsubscribe button (an RFC 8058 one-click POST)
    3  open the message and follow its unsubscribe link: GET the page, then
       POST its form (one of them from everything, the others from the list)

Only the first PLAYED_CONTACTS contacts take part, and the play stops after
TIME_LIMIT seconds, so a large demo stays quick. Requests go to loopback only:
a URL naming any other host is not fetched.
"""

import http.client
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from email import message_from_bytes, policy
from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin, urlsplit

PLAYED_CONTACTS = 4_000
TIME_LIMIT = 300
THREADS = 6
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

PROXY_AGENTS = [
    # Apple Mail Privacy Protection: a bare WebKit string with no browser version.
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
]
PEOPLE_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
]


def slot(address):
    """The contact's place in a shuffled thousand (0–999), or None when this contact does not play."""
    match = re.fullmatch(r"reader(\d+)", address.partition("@")[0])
    if match is None or int(match.group(1)) >= PLAYED_CONTACTS:
        return None
    # 379 is prime to 1000: every thousand consecutive contacts fill every slot once.
    return int(match.group(1)) * 379 % 1000


def plays(address):
    """Whether the simulation plays this recipient (the sink keeps their message)."""
    k = slot(address)
    return k is not None and k < 458


@dataclass
class Played:
    """What the simulation did, counted from the answers of the web server."""

    proxy_opens: int = 0  # recipients whose pixel a privacy proxy fetched
    people_opened: int = 0  # recipients who opened in a mail client
    pixel_fetches: int = 0  # every fetch of a pixel, proxies' included
    clicked: int = 0  # recipients who clicked a link
    one_click_unsubscribes: int = 0
    page_unsubscribes: int = 0
    page_unsubscribes_from_all: int = 0
    requests: int = 0
    not_played: int = 0  # recipients left out at the time limit
    errors: list = field(default_factory=list)

    def add(self, other):
        for name, value in asdict(other).items():
            if name == "errors":
                self.errors.extend(value)
            else:
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self):
        data = asdict(self)
        data["errors"] = data["errors"][:10]
        data["error_count"] = len(self.errors)
        return data


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        elif tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])


def tracking_urls(data):
    """(pixel URL, [click URLs], unsubscribe link in the body, List-Unsubscribe https URL) of a message."""
    message = message_from_bytes(data, policy=policy.default)
    html = message.get_body(preferencelist=("html",))
    parser = _Links()
    if html is not None:
        parser.feed(html.get_content())
    pixel = next((src for src in parser.images if "/t/o/" in src), None)
    clicks = [href for href in parser.hrefs if "/t/c/" in href]
    footer = next((href for href in parser.hrefs if "/t/u/" in href), None)
    header = re.findall(r"<(https?://[^>]+)>", str(message.get("List-Unsubscribe", "")))
    return pixel, clicks, footer, header[0] if header else None


class _Form(HTMLParser):
    """The unsubscribe page's form: its action and the choices it offers for ``scope``."""

    def __init__(self):
        super().__init__()
        self.action, self.scopes = None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and (attrs.get("method") or "").lower() == "post":
            self.action = attrs.get("action") or ""
        elif tag == "input" and attrs.get("name") == "scope":
            self.scopes.append(attrs.get("value"))


def fetch(method, url, agent, form=None):
    """(status, body) of one request to the demo's web server; never to anything but loopback."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"not a loopback URL, not fetched: {url}")
    headers = {"User-Agent": agent}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def play_one(address, data, done):
    """Play one recipient's part, counting in ``done`` (a Played) each step the web server answered."""
    k = slot(address)
    pixel, clicks, footer, one_click = tracking_urls(data)

    def get(url, agent, expect=200):
        status, body = fetch("GET", url, agent)
        done.requests += 1
        if status != expect:
            raise RuntimeError(f"GET {urlsplit(url).path} answered {status}")
        return body

    def post(url, agent, form):
        status, body = fetch("POST", url, agent, form)
        done.requests += 1
        if status != 200:
            raise RuntimeError(f"POST {urlsplit(url).path} answered {status}")
        return body

    if k < 150:
        get(pixel, PROXY_AGENTS[k % len(PROXY_AGENTS)])
        done.proxy_opens = done.pixel_fetches = 1
        return
    agent = PEOPLE_AGENTS[k % len(PEOPLE_AGENTS)]
    if 450 <= k < 455:
        # The mail client's button: the List-Unsubscribe URL, POSTed as RFC 8058 says.
        post(one_click, agent, {"List-Unsubscribe": "One-Click"})
        done.one_click_unsubscribes = 1
        return
    get(pixel, agent)
    done.people_opened = done.pixel_fetches = 1
    if 150 <= k < 210 and clicks:
        # The redirect's target is on the internet: read the 302, never follow it.
        get(clicks[k % len(clicks)], agent, expect=302)
        done.clicked = 1
    elif 210 <= k < 250:
        get(pixel, agent)
        done.pixel_fetches += 1
    elif 455 <= k < 458:
        page = get(footer, agent)
        form = _Form()
        form.feed(page)
        scope = "all" if k == 457 and "all" in form.scopes else form.scopes[0]
        post(urljoin(footer, form.action), agent, {"scope": scope})
        done.page_unsubscribes = 1
        done.page_unsubscribes_from_all = int(scope == "all")


class Audience:
    """Plays recipients on a few threads as their messages become ready."""

    def __init__(self, threads=THREADS, time_limit=TIME_LIMIT):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="recipient")
        self.time_limit = time_limit
        self.deadline = None
        self.submitted = set()
        self.futures = []

    def play(self, messages):
        """Start playing each recipient of ``messages`` (address -> message received) not played yet."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.time_limit
        for address in sorted(set(messages) - self.submitted):
            self.submitted.add(address)
            self.futures.append(self.pool.submit(self._one, address, messages[address]))

    def _one(self, address, data):
        done = Played()
        if time.monotonic() > self.deadline:
            done.not_played = 1
            return done
        try:
            play_one(address, data, done)
        except (OSError, RuntimeError, ValueError, http.client.HTTPException) as exc:
            done.errors.append(f"{address}: {exc}")
        return done

    def done(self):
        return sum(1 for future in self.futures if future.done())

    def result(self):
        """Wait for every recipient started; what they did, all told."""
        total = Played()
        for future in as_completed(self.futures):
            total.add(future.result())
        return total

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
