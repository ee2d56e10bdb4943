"""Graphs and the static site, from real RRD files written through the store.

Legend figures are checked against values computed here from what was written; hostile names
must come out escaped in every page and never leave html_dir; the site is loaded by headless
Chromium from `monitor serve`'s server.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from PIL import Image

from graphs import render, stats
from graphs import site as site_module
from graphs.serve import make_server, serve_in_thread, url_of
from graphs.site import SiteBuilder, due_periods
from monitor import files
from monitor.model import CheckResult, Kind, Measurement, State
from monitor.status import StatusBook
from monitor.store import RrdStore, safe_name
from monitor.units import format_value
from tests.conftest import MONITOR, ROOT

STEP = 60
NOW = 1_763_880_000  # a fixed "now" (multiple of 60); every build below uses it as its clock
START = NOW - 20 * 3600
END = NOW - 2 * 3600

HOSTILE = [
    "<script>alert(1)</script>",
    "quo\"te'd \" onmouseover=\"alert(2)",
    "../../../etc/passwd",
    "%n%s%x%2F..",
    "L" * 300,
    "bad\udcff\udcfe bytes",
    "$\\frac{1}{2}$ tex",
    "right\u202eto left\u200b",
]


def in_value(i: int) -> float | None:
    """Octets/s for sample i: a varied pattern with every 11th sample unknown (a gap)."""
    if i % 11 == 5:
        return None
    return 1000.0 * ((i * 37) % 101) + 0.5 * i


def out_value(i: int) -> float | None:
    if i % 13 == 3:
        return None
    return 250.0 * ((i * 17) % 53) + 7.25


def write_traffic(store: RrdStore, target: str, instance: str, start: int = START, end: int = END) -> None:
    ms = []
    for n, ts in enumerate(range(start, end + 1, STEP)):
        ms.append(Measurement(target, instance, "in_octets", in_value(n), Kind.GAUGE, "B", ts))
        ms.append(Measurement(target, instance, "out_octets", out_value(n), Kind.GAUGE, "B", ts))
    report = store.write(ms, STEP)
    assert not report.errors, report.errors


def expected(values: list[float | None]) -> dict[str, float]:
    """Independent computation of the legend figures (bits/s), written without graphs.stats."""
    bits = [v * 8 for v in values if v is not None]
    ordered = sorted(bits)
    rank = math.ceil(0.95 * len(ordered))  # nearest rank: the smallest value >= 95 % of samples
    return {
        "current": bits[-1],
        "average": sum(bits) / len(bits),
        "maximum": max(bits),
        "p95": ordered[rank - 1],
        "total": sum(v for v in values if v is not None) * STEP,  # octets transferred
    }


@pytest.fixture
def site(tmp_path: Path):
    store = RrdStore(tmp_path / "rrd")
    status = StatusBook(tmp_path / "state" / "status.json")

    def build(workers: int = 1, clock: float = NOW, **kwargs) -> tuple[SiteBuilder, object]:
        builder = SiteBuilder(store, status, tmp_path / "html", tmp_path / "state" / "graphs.json",
                              workers=workers, clock=lambda: clock,
                              inline_below=10**6 if workers == 1 else 0, **kwargs)
        try:
            report = builder.build()
        finally:
            builder.close()
        return builder, report

    return store, status, tmp_path / "html", build


# -- legend figures ------------------------------------------------------------------------------


def test_legend_figures_match_independent_computation(site):
    store, _status, html, build = site
    write_traffic(store, "dmz-router", "Gi0/1")
    n = (END - START) // STEP + 1
    # The file is created just before the first sample, so that sample covers one second of
    # its step: rrdtool (rightly) keeps it unknown. The figures start with the second one.
    want_in = expected([in_value(i) for i in range(1, n)])
    want_out = expected([out_value(i) for i in range(1, n)])

    info = store.info("dmz-router", "Gi0/1")
    result = render.render_job(store, render.Renderer(),
                               render.Job(info, ["day"], html / "direct", NOW))
    assert not result.error
    got_in, got_out = result.summaries["day"]["In"], result.summaries["day"]["Out"]
    for key in ("current", "average", "maximum", "p95", "total"):
        assert got_in[key] == pytest.approx(want_in[key], rel=1e-9), key
        assert got_out[key] == pytest.approx(want_out[key], rel=1e-9), key
    with Image.open(html / "direct" / "day.png") as image:
        # drawn at twice the size the pages show it: sharp on a high-DPI screen
        assert image.size == (2 * render.WIDTH, 2 * render.HEIGHT)

    # The same figures, formatted, on the interface's page.
    _, report = build()
    assert not report.errors
    page = (html / "dmz-router" / safe_name("Gi0/1") / "index.html").read_text()
    for key in ("current", "average", "maximum", "p95"):
        assert format_value(want_in[key], "b/s") in page
    assert format_value(want_in["total"], "B") in page and format_value(want_out["total"], "B") in page


def test_stats_skip_unknown_and_format_with_prefixes():
    values = [None, 1.0, float("nan"), 3.0, None]
    assert stats.current(values) == 3.0 and stats.average(values) == 2.0
    assert stats.total(values, 10) == 40.0 and stats.percentile([], 95) is None
    assert stats.percentile(list(range(1, 101)), 95) == 95
    assert format_value(12_345_678, "b/s") == "12.3 Mbit/s"
    assert format_value(2.5e9, "b/s") == "2.50 Gbit/s"
    assert format_value(0.0042, "s") == "4.20 ms"
    assert format_value(0.75, "") == "0.750"
    assert format_value(3 * 2**40, "B") == "3.0 TiB" and format_value(1e12, "B") == "931.3 GiB"
    assert format_value(3_840_000, "s") == "44 days" and format_value(30, "d") == "30 days"
    assert render.nice_axis(0, 87e6, 0.0, None) == (0.0, 100e6, 5)
    assert render.nice_axis(0, 42.0, 0.0, 100.0)[1] == 100.0


def test_kinds_follow_the_naming_contract():
    assert render.classify(["in_octets", "out_octets", "in_errors"]) == render.TRAFFIC
    assert render.classify(["response_seconds", "loss_percent"]) == render.LATENCY
    assert render.classify(["used_bytes", "used_percent"]) == render.PERCENT
    assert render.classify(["load1"]) == render.GENERIC


def test_gaps_stay_gaps(tmp_path):
    store = RrdStore(tmp_path / "rrd")
    write_traffic(store, "r", "idle", START, START + 3600)  # one hour, then nothing
    info = store.info("r", "idle")
    start, end, _ = render.window(render.PERIODS["day"], NOW, info.step)
    graph = render.build_graph(info, store.fetch_path(info, start, end))
    values = graph.layers[0].values
    assert math.isnan(values[-1])  # the last 2 hours are unknown, not zero
    assert not (values == 0).any()


# -- incremental ---------------------------------------------------------------------------------


def test_graphs_are_redrawn_only_when_due_and_changed(site):
    store, _status, html, build = site
    write_traffic(store, "r", "eth0", START, NOW - 600)
    _, report = build(clock=NOW)
    assert report.graphs == 4
    _, report = build(clock=NOW + 60)
    assert report.graphs == 0  # nothing changed
    write_traffic(store, "r", "eth0", NOW - 540, NOW - 300)
    _, report = build(clock=NOW + 120)
    assert report.graphs == 1  # the day graph; week, month and year are not due yet
    write_traffic(store, "r", "eth0", NOW - 240, NOW)
    _, report = build(clock=NOW + 1900)
    assert report.graphs == 2  # day and week
    entry = {"drawn": {p: NOW for p in render.PERIODS}, "stamps": {p: [1] for p in render.PERIODS}}
    (html / "x").mkdir()
    for p in render.PERIODS:
        (html / "x" / f"{p}.png").write_bytes(b"")
    assert due_periods(entry, [1], NOW + 86400, html / "x", 30) == ["day", "week", "month", "year"]
    assert due_periods(entry, [2], NOW + 7300, html / "x", 30) == ["day", "week", "month"]


def test_writes_are_atomic_renames(site):
    store, status, html, build = site
    write_traffic(store, "r", "eth0")
    build()
    png = html / "r" / "eth0" / "day.png"
    page = html / "r" / "eth0" / "index.html"
    before = {png: png.stat().st_ino, page: page.stat().st_ino}
    with open(png, "rb") as reader:
        old = reader.read()
        reader.seek(0)
        builder = SiteBuilder(store, status, html, html.parent / "state" / "graphs.json", workers=1,
                              inline_below=10**6, clock=lambda: NOW + 60)
        builder.build(full=True)
        # A reader that opened the old file still reads all of it: the new one was renamed in.
        assert reader.read() == old
    for path, inode in before.items():
        assert path.stat().st_ino != inode
    leftovers = [p for p in html.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_a_build_syncs_its_files_once_before_its_state(site, monkeypatch):
    """Graphs and pages are not fsynced one by one (two journal commits each); one syncfs of
    html_dir makes them durable before the state says they were drawn."""
    store, _status, html, build = site
    write_traffic(store, "r", "eth0")
    events: list[str] = []
    real_fsync, real_sync = files.os.fsync, files.sync_filesystem

    def fsync(fd: int) -> None:
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    def sync(path: Path) -> None:
        events.append(f"syncfs {path}")
        real_sync(path)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(site_module, "sync_filesystem", sync)
    build()
    state = html.parent / "state"
    assert events[0] == f"syncfs {html}"
    # after it, only the state file's own fsyncs (the file, its directory)
    assert all(e.startswith(f"fsync {state}") for e in events[1:]) and len(events) >= 2
    assert (html / "r" / "eth0" / "day.png").stat().st_size > 0


# -- hostile names -------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag == "img":
            self.images.append(values.get("src") or "")
        for name, _ in attrs:
            assert not name.startswith("on"), f"event handler attribute {name}"


def hostile_site(store: RrdStore, status: StatusBook) -> None:
    write_traffic(store, "dmz-router", "Gi0/1")
    for i, name in enumerate(HOSTILE):
        write_traffic(store, name, "eth0", START, START + 7200)
        write_traffic(store, "dmz-router", name, START + i * 60, START + 7200)
    checks = [CheckResult(name, "if eth0", State.CRITICAL, f"link down: {name}", timestamp=NOW - 300)
              for name in HOSTILE]
    checks += [CheckResult("dmz-router", f"if {name}", State.WARNING, f"{name} flaps", timestamp=NOW)
               for name in HOSTILE]
    checks.append(CheckResult("dmz-router", "if Gi0/1", State.OK, "up", timestamp=NOW - 86400))
    status.update(checks)


def test_hostile_names_are_escaped_everywhere(site, tmp_path):
    store, status, html, build = site
    hostile_site(store, status)
    _, report = build()
    assert not report.errors, report.errors
    pages = sorted(html.rglob("*.html"))
    # index, problems; 8 targets; the router's 8 interfaces and eth0 of each hostile target
    assert len(pages) == 2 + (len(HOSTILE) + 1) * 2 + len(HOSTILE)
    root = html.resolve()
    for path in html.rglob("*"):
        assert path.resolve().is_relative_to(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["html", "rrd", "state"]
    for page in pages:
        text = page.read_text(encoding="utf-8")  # valid UTF-8 although names were not
        # the overview's own filter script is the only one, and it holds no name
        own = re.findall(r"<script>\n// Narrow the list.*?</script>", text, re.S)
        assert len(own) == (page.name == "index.html" and page.parent == html)
        assert not [o for o in own if "alert(" in o or "etc/passwd" in o]
        text = text.replace(own[0], "") if own else text
        for raw in ("<script", "onmouseover=\"", "\udcff"):
            assert raw not in text, (page, raw)
        parser = _Links()
        parser.feed(text)
        assert parser.scripts == 0
        for ref in parser.links + parser.images:
            parts = urlsplit(ref)
            assert not parts.scheme and not parts.netloc and not ref.startswith("/"), ref
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_relative_to(root) and target.exists(), (page, ref)
    index = (html / "index.html").read_text().split("<main>")[1]  # past the CSS
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "quo&#34;te&#39;d &#34; onmouseover=&#34;alert(2)" in index
    assert "bad\ufffd\ufffd bytes" in index
    assert "right\ufffdto left\ufffd" in index and "\u202e" not in index  # no reordered rows
    problems = (html / "problems.html").read_text().split("<main>")[1]
    assert problems.count("CRITICAL</span>") == len(HOSTILE)
    assert problems.index("CRITICAL") < problems.index("WARNING")  # worst first
    # Problems come first on the index too; the healthy router interface is after them.
    assert index.index("CRITICAL") < index.index(">OK<")


# -- serving and a real browser ------------------------------------------------------------------


def test_serve_is_read_only_and_stays_inside(tmp_path):
    import http.client

    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text("<p>hi</p>")
    (tmp_path / "secret.txt").write_text("secret")
    (html / "link").symlink_to(tmp_path / "secret.txt")
    server = make_server(html, "127.0.0.1", 0)
    serve_in_thread(server)
    try:
        host, port = server.server_address[:2]

        def get(method: str, path: str) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read()

        assert get("GET", "/index.html") == (200, b"<p>hi</p>")
        assert get("GET", "/../secret.txt")[0] == 404
        assert get("GET", "/%2e%2e/secret.txt")[0] == 404
        assert get("GET", "/link")[0] == 404
        assert get("GET", "/")[0] == 200  # index.html
        assert get("POST", "/index.html")[0] == 501
        assert get("PUT", "/index.html")[0] == 501
        assert get("DELETE", "/index.html")[0] == 501
    finally:
        server.shutdown()
        server.server_close()


CHROMIUM = "/usr/bin/chromium"


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian's chromium is not installed")
def test_chromium_loads_index_and_interface_page(site, tmp_path):
    store, status, html, build = site
    hostile_site(store, status)
    _, report = build(workers=2)  # the process pool, as `monitor run` uses it
    assert report.graphs and not report.errors
    requests: list[tuple[str, int]] = []
    lock = threading.Lock()

    def seen(path: str, code: int) -> None:
        with lock:
            requests.append((path, code))

    server = make_server(html, "127.0.0.1", 0, on_request=seen)
    serve_in_thread(server)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    try:
        base = url_of(server)
        pages = {"index": base + "index.html",
                 "interface": base + f"dmz-router/{safe_name('Gi0/1')}/index.html"}
        for name, url in pages.items():
            shot = artifacts / f"graphs-{name}.png"
            result = chromium(tmp_path, "--window-size=1280,1400", f"--screenshot={shot}", url)
            assert result.returncode == 0, result.stderr[-2000:]
            assert shot.stat().st_size > 10_000
            console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
            assert console == [], console
            # Every image of the page was fetched by the browser, answered 200, and is a PNG.
            parser = _Links()
            parser.feed((html / unquote(urlsplit(url).path).lstrip("/")).read_text())
            assert parser.images, f"{name}: no images"
            with lock:
                answered = dict(requests)
            for src in parser.images:
                path = urlsplit(urljoin(url, src)).path
                assert answered.get(path) == 200, f"{name}: image {src} -> {answered.get(path)}"
                with Image.open(html / unquote(path).lstrip("/")) as image:
                    image.verify()
        assert not [r for r in requests if r[1] >= 400], requests
    finally:
        server.shutdown()
        server.server_close()


def graph_config(write_config, data: Path, workers: int = 1) -> Path:
    """A config for `monitor graph` on data_dir `data` (no collectors)."""
    return write_config(f"""
        [agent]
        data_dir = "{data}"
        interval = "1m"
        [host]
        enabled = false
        [disks]
        enabled = false
        [web]
        workers = {workers}
    """)


def test_monitor_graph_command_writes_the_site(tmp_path, write_config):
    config = graph_config(write_config, tmp_path / "data")
    store = RrdStore(tmp_path / "data" / "rrd")
    write_traffic(store, "dmz-router", "Gi0/1")
    store.close()
    result = subprocess.run([*MONITOR, "--config", str(config), "graph"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "drew 4 graph(s)" in result.stdout
    assert re.search(r"file://\S+/index.html", result.stdout)
    assert "graphs: 4/4 drawn" in result.stderr  # progress as log lines when not a terminal
    assert (tmp_path / "data" / "html" / "dmz-router" / safe_name("Gi0/1") / "year.png").exists()



async def test_monitor_serve_command_and_site_job(tmp_path, write_config):
    import urllib.request

    from monitor.agent import Agent
    from monitor.config import load_config

    config = write_config(f"""
        [agent]
        data_dir = "{tmp_path / 'data'}"
        interval = "1m"
        [host]
        enabled = false
        [disks]
        enabled = false
    """)
    html = tmp_path / "data" / "html"
    html.mkdir(parents=True)
    (html / "index.html").write_text("<p>site</p>")
    process = subprocess.Popen([*MONITOR, "--config", str(config), "serve", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line + process.stderr.read()
        with urllib.request.urlopen(url.group(0) + "index.html", timeout=10) as response:
            assert response.read() == b"<p>site</p>"
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()

    agent = Agent(load_config(config))
    agent.schedule()
    assert "site" in agent.scheduler.stats()
    assert agent.site is not None and agent.site.html_dir == html
    write_traffic(agent.store, "r", "eth0")
    try:
        await agent._build_site()  # what the site job runs: worker processes, real pages
    finally:
        agent.site.close()
    assert (html / "r" / "eth0" / "day.png").exists()
    assert "eth0" in (html / "r" / "index.html").read_text()
    assert "<p>site</p>" not in (html / "index.html").read_text()


def test_time_axis_is_in_local_time(monkeypatch):
    import time as time_module

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no daylight saving
    time_module.tzset()
    try:
        end = 1_763_856_000  # 2025-11-23 00:00 UTC = 05:30 in Kolkata
        majors, labels, _ = render.time_ticks("day", end - 86400, end)
        assert labels[0] == "06:00" and (majors[0] - end) % 3600 == 1800  # local full hours
        assert all(int(label[:2]) % 3 == 0 and label.endswith(":00") for label in labels)
        majors, labels, _ = render.time_ticks("week", end - 7 * 86400, end)
        assert all((m + 19800) % 86400 == 0 for m in majors)  # local midnights
    finally:
        monkeypatch.undo()
        time_module.tzset()


def test_problems_page_lists_firing_alerts(site, tmp_path):
    from alerts.engine import AlertState, Status
    from alerts.state import AlertStore

    store, status, html, _ = site
    write_traffic(store, "<b>edge</b>", "eth0", START, START + 600)
    db = tmp_path / "state" / "alerts.db"
    AlertStore(db).save([
        AlertState("r/<b>edge</b>/if eth0", "link-down", "<b>edge</b>", "if eth0 <i>",
                   status=Status.FIRING, severity=State.CRITICAL, since=NOW - 600,
                   message="eth0 down <script>x</script>"),
        AlertState("r/quiet/x", "link-down", "quiet", "x", status=Status.OK, severity=State.OK),
    ])
    builder = SiteBuilder(store, status, html, tmp_path / "state" / "graphs.json", workers=1,
                          inline_below=10**6,
                          clock=lambda: NOW, alerts_db=db)
    builder.build()
    page = (html / "problems.html").read_text().split("<main>")[1]
    assert "Problems (1)" in page and "FIRING" in page
    assert "eth0 down &lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    assert f'href="{safe_name("<b>edge</b>")}/index.html"' in page
    assert "quiet" not in page  # an OK alert is not a problem


def test_pages_of_series_no_longer_stored_are_removed(site, tmp_path):
    store, _status, html, build = site
    write_traffic(store, "r", "eth0")
    write_traffic(store, "r", "eth1")
    write_traffic(store, "old-switch", "port1")
    build()
    assert (html / "r" / "eth1" / "day.png").exists()
    assert (html / "old-switch" / "port1" / "index.html").exists()
    (html / "r" / "eth1" / "notes.txt").write_text("the admin's own file")
    for target, instance in (("r", "eth1"), ("old-switch", "port1")):
        store.path_for(target, instance).unlink()  # the admin deleted the data
    fresh = RrdStore(tmp_path / "rrd")  # what `monitor graph` or a restarted agent sees
    builder = SiteBuilder(fresh, _status, html, tmp_path / "state" / "graphs.json", workers=1,
                          inline_below=10**6,
                          clock=lambda: NOW)
    try:
        builder.build()
    finally:
        builder.close()
    assert (html / "r" / "eth0" / "day.png").exists()
    assert sorted(p.name for p in (html / "r" / "eth1").iterdir()) == ["notes.txt"]
    assert not (html / "old-switch").exists()
    assert "old-switch" not in (html / "index.html").read_text()


def test_an_abandoned_build_stops_drawing_and_leaves_the_rest_due(tmp_path: Path):
    """What the agent does when it stops: the site build in flight ends at its next chunk
    instead of holding the stop; what it did not draw is drawn by the next build."""
    store = RrdStore(tmp_path / "rrd")
    for i in range(12):  # 4 chunks of 3 series for one worker, 2 sent at a time
        write_traffic(store, "router", f"if{i}", start=END - 86400)
    status = StatusBook(tmp_path / "state" / "status.json")
    builder = SiteBuilder(store, status, tmp_path / "html", tmp_path / "state" / "graphs.json",
                          workers=1, clock=lambda: NOW)
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(total)
        if done:
            builder.abandon()  # as Agent.stop does, from the event loop's thread

    try:
        first = builder.build(progress=progress)
        total = seen[0]
        assert 0 < first.graphs < total and not first.errors
        # A build that starts after the stop began (its turn was already on its way) draws
        # nothing either.
        assert builder.build().graphs == 0
    finally:
        builder.close()
    restarted = SiteBuilder(store, status, tmp_path / "html", tmp_path / "state" / "graphs.json",
                            workers=1, clock=lambda: NOW)
    try:
        second = restarted.build()
        assert first.graphs + second.graphs == total
    finally:
        restarted.close()
