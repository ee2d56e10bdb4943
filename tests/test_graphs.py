"""Graphs and the static site, on real RRD files written through RrdStore."""

from __future__ import annotations

import html.parser
import http.client
import itertools
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from graphs.render import classify
from graphs.serve import make_server
from graphs.site import Site, display
from graphs.stats import percentile, si, summarize
from monitor.files import atomic_write
from monitor.model import CheckResult, Kind, Measurement, State
from monitor.status import StatusBook
from monitor.store import RrdStore

STEP = 300
NOW = 1_790_000_100 - (1_790_000_100 % STEP)  # a fixed, step-aligned "now"


def traffic(target: str, instance: str, values: list[tuple[int, float | None, float | None]]):
    out = []
    for ts, vin, vout in values:
        for metric, v in (("in_octets", vin), ("out_octets", vout)):
            if v is not None:
                out.append(Measurement(target, instance, metric, v, Kind.GAUGE, "B/s", ts))
    return out


def known_day(seed: int = 7, now: int = NOW) -> list[tuple[int, float | None, float | None]]:
    rng = random.Random(seed)
    rows = []
    for i in range(int(1.5 * 86400 / STEP)):
        ts = now - (int(1.5 * 86400 / STEP) - 1 - i) * STEP
        gap = 100 <= i % 300 < 112  # an hour without data: must stay a gap
        rows.append((ts, None if gap else rng.uniform(1e4, 5e6),
                     None if gap else float(rng.randint(1000, 900_000))))
    return rows


def make_site(tmp_path: Path, store: RrdStore, status: StatusBook, now: int = NOW,
              workers: int = 0) -> Site:
    return Site(html_dir=tmp_path / "html", state_dir=tmp_path / "state", store=store,
                status=status, workers=workers, clock=lambda: now, refresh=120)


@pytest.fixture
def store(tmp_path: Path) -> RrdStore:
    return RrdStore(tmp_path / "rrd")


@pytest.fixture
def status(tmp_path: Path) -> StatusBook:
    return StatusBook(tmp_path / "state" / "status.json")


def test_legend_figures_match_independent_computation(tmp_path, store, status):
    rows = known_day()
    store.write(traffic("r1", "ge-0/0/1", rows), STEP)
    site = make_site(tmp_path, store, status)
    report = site.build()
    assert not report.errors and report.drawn == 4
    legend = site._load_state()["r1/ge-0%2F0%2F1/day.png"]["legend"]
    assert legend["kind"] == "traffic" and legend["step"] == STEP
    by_label = {r["label"]: r for r in legend["rows"]}
    # Independently: the written values whose time falls in the day window (NOW-1d, NOW].
    # RRD semantics: a sample arriving after a silence longer than the heartbeat (2 steps)
    # covers an unknown interval, so the first sample after each gap is unknown too.
    stored = [rows[0]] + [(r[0], None, None) if p[1] is None else r for p, r in itertools.pairwise(rows)]
    window = [r for r in stored if NOW - 86400 < r[0] <= NOW]
    for label, col in (("In", 1), ("Out", 2)):
        known = np.array([r[col] for r in window if r[col] is not None])
        got = by_label[label]
        assert got["unit"] == "b/s"
        assert got["known"] == len(known)
        assert got["maximum"] == pytest.approx(known.max() * 8, rel=1e-9)
        assert got["average"] == pytest.approx(known.mean() * 8, rel=1e-9)
        assert got["p95"] == pytest.approx(np.percentile(known, 95, method="inverted_cdf") * 8,
                                           rel=1e-9)
        assert got["total"] == pytest.approx(known.sum() * STEP, rel=1e-9)  # bytes
        last = next(r[col] for r in reversed(window) if r[col] is not None)
        assert got["current"] == pytest.approx(last * 8, rel=1e-9)
    page = (tmp_path / "html/r1/ge-0%2F0%2F1/index.html").read_text()
    assert si(by_label["In"]["p95"], "b/s") in page and "Total transferred" in page
    png = (tmp_path / "html/r1/ge-0%2F0%2F1/day.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_stats_and_units():
    assert summarize([None, float("nan")], 60).known == 0
    s = summarize([1.0, None, 3.0, 2.0], 10)
    assert (s.current, s.average, s.maximum, s.total, s.known) == (2.0, 2.0, 3.0, 60.0, 3)
    assert percentile(list(range(1, 101))) == 95
    assert percentile([5.0]) == 5.0
    assert si(12_345_678, "b/s") == "12.3 Mb/s"
    assert si(0.0123, "s") == "12.3 ms"
    assert si(2.5, "s") == "2.5 s"
    assert si(45.5, "%") == "45.5 %"
    assert si(None, "b/s") == "-"
    assert si(1.2e9, "b/s") == "1.2 Gb/s"
    assert classify(["in_octets", "out_octets", "in_errors"]) == "traffic"
    assert classify(["response_seconds", "loss_percent"]) == "latency"
    assert classify(["used_bytes", "used_percent"]) == "percent"
    assert classify(["uptime_seconds"]) == "generic"


HOSTILE = [
    "<script>alert(1)</script>",
    'q"uote\'s & <b>',
    "../../../etc/passwd",
    "%n%s%x %2e%2e",
    "x" * 300,
    "caf\udce9-\udcff",  # non-UTF-8 bytes from a device, via surrogateescape
]


class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend((tag, k, v or "") for k, v in attrs)

    def handle_data(self, data):
        self.text.append(data)


def test_hostile_names_are_escaped_everywhere(tmp_path, store, status):
    ms, checks = [], []
    for i, name in enumerate(HOSTILE):
        ms += traffic(name, name, [(NOW - STEP, 1000.0 * (i + 1), 10.0), (NOW, 2000.0, 20.0)])
        ms.append(Measurement(name, f"svc {name}", "response_seconds", 0.01, Kind.GAUGE, "s", NOW))
        checks.append(CheckResult(name, f"if {name}", State.CRITICAL, f"down: {name}", timestamp=NOW))
        checks.append(CheckResult(name, f"svc {name}", State.WARNING, f"slow {name}", timestamp=NOW))
    store.write(ms, STEP)
    status.update(checks)
    report = make_site(tmp_path, store, status).build()
    assert not report.errors, report.errors
    root = (tmp_path / "html").resolve()
    pages = sorted(root.rglob("*.html"))
    assert len(pages) == 2 + len(HOSTILE) * 3  # index, problems; target + 2 instances each
    for f in root.rglob("*"):
        assert f.resolve().is_relative_to(root)
        assert not f.name.endswith(".tmp")
    shown = {display(n) for n in HOSTILE}
    for page in pages:
        raw = page.read_text(encoding="utf-8")
        assert "<script" not in raw and "<b>" not in raw
        parser = _Collect()
        parser.feed(raw)
        assert "script" not in parser.tags
        assert set(parser.tags) <= {"html", "head", "meta", "title", "style", "body", "header",
                                    "a", "span", "main", "h1", "h2", "p", "table", "tr", "th",
                                    "td", "div", "img", "strong"}
        # Every link and image is relative, stays inside the site and exists.
        for _tag, key, value in parser.attrs:
            if key in ("href", "src"):
                assert "://" not in value and not value.startswith("/")
                target = (page.parent / unquote(value)).resolve()
                assert target.is_relative_to(root) and target.exists(), (page, value)
        # The names come back intact from text and attributes (escaped, not mangled).
        found = "".join(parser.text) + "".join(v for _, _, v in parser.attrs)
        if page.name == "index.html" and page.parent == root:
            for name in shown:
                assert name in found
    # Titles and alt texts carry the names as attribute values, escaped.
    index = (root / "index.html").read_text()
    assert 'title="q&#34;uote&#39;s &amp; &lt;b&gt;"' in index
    problems = (root / "problems.html").read_text()
    assert "down: &lt;script&gt;alert(1)&lt;/script&gt;" in problems


def test_incremental_redraws_only_what_is_due(tmp_path, store, status):
    store.write(traffic("r1", "a", known_day()), STEP)
    store.write(traffic("r1", "b", known_day(8)), STEP)
    first = make_site(tmp_path, store, status).build()
    assert first.drawn == 8
    index = tmp_path / "html/index.html"
    inode = index.stat().st_ino
    again = make_site(tmp_path, store, status, NOW + 60).build()
    assert again.drawn == 0 and again.skipped == 8  # nothing changed
    assert index.stat().st_ino != inode  # pages replaced by rename, never rewritten in place
    # New data for "a" only, 5 min later: only its day graph is due.
    os.utime(store.info("r1", "a").path, ns=(0, 0))  # mtime-granularity proof on fast disks
    store.write(traffic("r1", "a", [(NOW + STEP, 1.0, 2.0)]), STEP)
    later = make_site(tmp_path, store, status, NOW + STEP).build()
    assert later.drawn == 1
    # Two hours on, new data again: day, week and month are due, the year not yet.
    store.write(traffic("r1", "a", [(NOW + 2 * STEP, 1.0, 2.0)]), STEP)
    os.utime(store.info("r1", "a").path, ns=(1, 1))
    two_hours = make_site(tmp_path, store, status, NOW + 7300).build()
    assert two_hours.drawn == 3


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "page.html"
    atomic_write(path, "old")

    class Boom(bytes):
        pass

    with pytest.raises(TypeError):
        atomic_write(path, 12345)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_serve_is_read_only_and_stays_inside(tmp_path):
    site = tmp_path / "html"
    site.mkdir()
    (site / "index.html").write_text("<p>hi</p>")
    (tmp_path / "secret.txt").write_text("secret")
    (site / "link.txt").symlink_to(tmp_path / "secret.txt")
    server = make_server(site, "127.0.0.1", 0)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]

        def get(path: str, method: str = "GET") -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            return resp.status, body

        assert get("/") == (200, b"<p>hi</p>")
        assert get("/../secret.txt")[0] == 404
        assert get("/%2e%2e/secret.txt")[0] == 404
        assert get("/link.txt")[0] == 404
        assert get("/index.html", "POST")[0] == 501
        assert get("/index.html", "PUT")[0] == 501
    finally:
        server.shutdown()
        server.server_close()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_chromium_loads_index_and_interface_page(tmp_path, write_config):
    """`monitor graph` (worker processes) then `monitor serve`, loaded by headless Chromium."""
    data = tmp_path / "data"
    config = write_config(f"""
        [agent]
        data_dir = "{data}"
        [web]
        title = "Test <DMZ>"
    """)
    store = RrdStore(data / "rrd")
    now = int(time.time()) // STEP * STEP  # `monitor graph` draws up to the real now
    store.write(traffic("router", "ge-0/0/1", known_day(now=now)), STEP)
    store.write([Measurement("mail.example.net", "smtp", "response_seconds", 0.02 + i / 1e4,
                             Kind.GAUGE, "s", now - i * STEP) for i in range(200, -1, -1)], STEP)
    book = StatusBook(data / "state" / "status.json")
    book.update([CheckResult("router", "if ge-0/0/1", State.CRITICAL, "ge-0/0/1 is down",
                             timestamp=now - 3600)])
    book.save()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run([sys.executable, "-m", "monitor", "-c", str(config), "graph",
                           "--workers", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "drew 8 graph(s)" in done.stdout
    server = subprocess.Popen([sys.executable, "-m", "monitor", "-c", str(config), "serve",
                               "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        ARTIFACTS.mkdir(exist_ok=True)
        pages = {"index": url + "index.html",
                 "interface": url + "router/ge-0%252F0%252F1/index.html"}
        for name, page in pages.items():
            profile = tmp_path / f"profile-{name}"
            if name == "interface":  # one screenshot keeps the test short; both pages are loaded
                shot = ARTIFACTS / f"graphs-{name}.png"
                run = subprocess.run(
                    [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                     "--enable-logging=stderr", "--v=0", "--window-size=1100,1400",
                     f"--screenshot={shot}", page], capture_output=True, text=True, timeout=90)
                console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln]
                assert not console, console
                assert shot.read_bytes().startswith(b"\x89PNG")
            dom = subprocess.run(
                [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
                 "--v=0", "--dump-dom", page], capture_output=True, text=True, timeout=90)
            console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
            assert not console, console
            parser = _Collect()
            parser.feed(dom.stdout)
            images = [v for tag, key, v in parser.attrs if tag == "img" and key == "src"]
            assert images, dom.stdout[:500]
            base = page.rsplit("/", 1)[0] + "/"
            host, port = url.split("//")[1].rstrip("/").split(":")
            for src in images:
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                path = (base + src).split(url, 1)[1]
                conn.request("GET", "/" + path)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                assert resp.status == 200 and body.startswith(b"\x89PNG"), src
            if name == "index":
                assert "CRITICAL" in dom.stdout and "Test &lt;DMZ&gt;" in dom.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_run_schedules_the_site_job(write_config, tmp_path):
    from monitor.agent import Agent
    from monitor.config import load_config

    config = load_config(write_config(f"""
        [agent]
        data_dir = "{tmp_path / 'data'}"
        [web]
        interval = "10m"
        workers = 1
    """))
    agent = Agent(config)
    agent.schedule()
    assert agent.site is not None and "site" in agent.scheduler._jobs
