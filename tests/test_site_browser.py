"""The built site in a real browser (headless Chromium) and crawled: layout at desktop and phone
widths in light and dark mode, every link and image present, every graph covering its period.

Data: the long history of tests/longhistory.py. Screenshots go to test-artifacts/ for a look.
"""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np
import pytest
from PIL import Image

from graphs import render
from graphs.render import PERIODS
from graphs.serve import make_server, serve_in_thread, url_of
from graphs.site import SiteBuilder
from monitor.model import CheckResult, State
from monitor.status import StatusBook
from monitor.store import safe_name
from tests import longhistory
from tests.conftest import ROOT
from tests.test_graphs import CHROMIUM, chromium

PAGES = {
    "index": "index.html",
    "device": f"{safe_name(longhistory.ROUTER)}/index.html",
    "interface": f"{safe_name(longhistory.ROUTER)}/{safe_name(longhistory.UPLINK)}/index.html",
    "service": f"{safe_name(longhistory.WEB)}/ping/index.html",
}


@pytest.fixture(scope="module")
def long_site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("site")
    store = longhistory.copy(root / "rrd")
    status = StatusBook(root / "state" / "status.json")
    end = longhistory.END
    status.update([
        CheckResult(longhistory.ROUTER, "snmp", State.OK, "core-router: 3 interface(s) polled, "
                    "2 up, up 99 days", timestamp=end),
        CheckResult(longhistory.ROUTER, f"if {longhistory.UPLINK}", State.OK,
                    f"{longhistory.UPLINK} (transit: ExampleNet AS64500, circuit 12-3456-789) up, "
                    "1 Gbit/s", timestamp=end),
        CheckResult(longhistory.ROUTER, f"if {longhistory.DOWN_PORT}", State.CRITICAL,
                    f"core-router interface {longhistory.DOWN_PORT} (customer-without-a-break-"
                    "in-its-very-long-description-of-the-circuit) is down (admin up)", timestamp=end),
        CheckResult(longhistory.WEB, "ping", State.WARNING, "20 % loss, rtt 18.9 ms", timestamp=end),
        CheckResult(longhistory.WEB, "http", State.OK, "HTTP 200 in 0.12 s", timestamp=end),
    ])
    builder = SiteBuilder(store, status, root / "html", root / "state" / "graphs.json", workers=1,
                          inline_below=10**6, clock=lambda: end, uplinks=[f"* {longhistory.UPLINK}"])
    try:
        report = builder.build(full=True)
    finally:
        builder.close()
    assert not report.errors, report.errors
    yield store, root / "html"
    store.close()


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag == "img" and values.get("src"):
            self.images.append(values["src"] or "")


def plotted_extent(path: Path) -> tuple[int, int]:
    """The first and last pixel column of the plot area that hold data (not background or grid)."""
    s = render.SCALE  # the geometry is in CSS pixels, the image has SCALE times as many
    top, bottom = (render._AX_TOP + 2) * s, (render.HEIGHT - render._AX_BOTTOM - 2) * s
    area = np.asarray(Image.open(path).convert("RGB"))[top:bottom, (render._AX_LEFT + 2) * s:
                                                       (render.WIDTH - render._AX_RIGHT) * s]
    grey = (np.abs(area.astype(int) - area.mean(axis=2, keepdims=True)) < 12).all(axis=2)
    columns = np.flatnonzero((~grey).any(axis=0))
    return int(columns[0]), int(columns[-1])


def test_crawl_every_link_image_and_page_is_whole_and_graphs_cover_their_period(long_site):
    _, html = long_site
    seen, queue = set(), ["index.html", "problems.html"]
    while queue:
        rel = queue.pop()
        if rel in seen:
            continue
        seen.add(rel)
        page = html / unquote(rel)
        assert page.is_file(), f"broken link to {rel}"
        text = page.read_text(encoding="utf-8")
        assert text.rstrip().endswith("</html>"), f"{rel} ends early"
        parser = _Page()
        parser.feed(text)
        for src in parser.images:
            image = html / unquote(urlsplit(urljoin(rel, src)).path)
            assert image.is_file(), f"{rel}: missing image {src}"
            with Image.open(image) as png:
                png.load()  # complete: a truncated PNG raises here
        for href in parser.links:
            target = urlsplit(urljoin(rel, href))
            assert not target.scheme and not target.netloc, href
            queue.append(target.path.lstrip("/"))
    assert len(seen) > 10
    leftovers = [p for p in html.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []
    # Each period's graph shows data from (near) its left edge to its right edge: the data of
    # the period it claims, on that period's axis (a year drawn on a day's axis fails this).
    width = (render.WIDTH - render._AX_RIGHT - render._AX_LEFT - 2) * render.SCALE
    for name in PERIODS:
        first, last = plotted_extent(html / safe_name(longhistory.ROUTER) /
                                     safe_name(longhistory.UPLINK) / f"{name}.png")
        assert first <= 0.02 * width and last >= 0.97 * width, (name, first, last, width)


PROBE = """<!DOCTYPE html><html><body style="margin:0;white-space:nowrap">
<pre id="out" style="margin:0;height:4px;overflow:hidden"></pre><script>
// Each page in an iframe of the width under test; its document's scrollWidth against its
// clientWidth is horizontal overflow. The results are written into the DOM for --dump-dom.
var results = {}, pending = 0, frames = %s;
frames.forEach(function (f) {
  var frame = document.createElement("iframe");
  frame.width = f.width; frame.height = 1500; frame.src = f.url; pending++;
  frame.style = "border:0;margin-right:10px;vertical-align:top";
  frame.onload = function () {
    var d = frame.contentDocument.documentElement;
    // A table that scrolls sideways inside its box is overflow too (the reader must swipe
    // inside the page to see its last column): which ones, by their first header.
    var inner = [];
    frame.contentDocument.querySelectorAll(".scroll").forEach(function (box) {
      if (box.scrollWidth > box.clientWidth + 1)
        inner.push((box.querySelector("h2, th, td") || box).textContent.slice(0, 40) + " "
                   + box.scrollWidth + ">" + box.clientWidth);
    });
    // Where the graph images are: how many share a row, how wide they are shown.
    var graphs = [];
    frame.contentDocument.querySelectorAll(".graph img").forEach(function (img) {
      var box = img.getBoundingClientRect();
      graphs.push({top: Math.round(box.top), left: Math.round(box.left),
                   width: Math.round(box.width)});
    });
    results[f.name + "@" + f.width] = {scroll: d.scrollWidth, client: d.clientWidth, inner: inner,
      dark: frame.contentWindow.matchMedia("(prefers-color-scheme: dark)").matches,
      graphs: graphs};
    if (--pending === 0) document.getElementById("out").textContent = JSON.stringify(results);
  };
  document.body.appendChild(frame);
});
</script></body></html>"""

def probed(tmp_path: Path, url: str, *flags: str) -> dict:
    """What a probe page wrote into its <pre id="out">, as JSON, after Chromium ran it."""
    result = chromium(tmp_path, *flags, "--virtual-time-budget=10000", "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="out"[^>]*>(.*?)</pre>', result.stdout, re.S)
    assert found and found.group(1), result.stdout[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


def screenshot(tmp_path: Path, shot: Path, url: str, *flags: str) -> None:
    """A screenshot for a person to look at (test-artifacts/)."""
    result = chromium(tmp_path, *flags, "--hide-scrollbars", "--virtual-time-budget=10000",
                      f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.stat().st_size > 20_000, result.stderr[-500:]


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian's chromium is not installed")
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_horizontal_overflow_at_1400_and_400_px(long_site, tmp_path, scheme):
    """Index, device, interface and service page at 1400 and 400 px: no horizontal overflow,
    of the page or of a table inside its scroll box (tables reflow on a phone).
    The screenshots (test-artifacts/site-{width}-{scheme}.png, the four pages side by side)
    are for a person to look at."""
    _, html = long_site
    server = make_server(html, "127.0.0.1", 0)
    serve_in_thread(server)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    flags = ["--blink-settings=preferredColorScheme=0"] if scheme == "dark" else []
    probes = []
    try:
        base = url_of(server)
        for width in (1400, 400):
            frames = [{"name": name, "url": rel, "width": width} for name, rel in PAGES.items()]
            probe = html / f"probe-{scheme}-{width}.html"
            probe.write_text(PROBE % json.dumps(frames))
            probes.append(probe)
            window = f"--window-size={len(frames) * (width + 10)},1510"
            measured = probed(tmp_path, base + probe.name, *flags, window)
            assert len(measured) == len(frames)
            overflow = {page: m for page, m in measured.items()
                        if m["scroll"] > m["client"] or m["inner"]}
            assert overflow == {}, json.dumps(overflow)
            assert {m["dark"] for m in measured.values()} == {scheme == "dark"}
            for page in ("device", "interface"):
                graphs = measured[f"{page}@{width}"]["graphs"]
                per_row = max(sum(g["top"] == top for g in graphs) for top in {g["top"] for g in graphs})
                widest = max(g["width"] for g in graphs)
                # 1400 px: two graphs a row, each near its drawn 720 px; 400 px: one, the
                # phone's width
                assert len(graphs) >= 3 and per_row == (2 if width == 1400 else 1), (page, graphs)
                assert (widest >= 600) if width == 1400 else (widest <= width), (page, graphs)
            screenshot(tmp_path, artifacts / f"site-{width}-{scheme}.png", base + probe.name,
                       *flags, window)
    finally:
        server.shutdown()
        server.server_close()
        for probe in probes:
            probe.unlink()


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian's chromium is not installed")
def test_overview_filter_narrows_the_list(long_site, tmp_path):
    _, html = long_site
    server = make_server(html, "127.0.0.1", 0)
    serve_in_thread(server)
    try:
        result = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom",
                          url_of(server) + "index.html#q=transit%20up")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"<tr [^>]*data-text=[^>]*>", result.stdout)
    shown = [re.search(r'data-text="([^ "]*)', row).group(1) for row in rows
             if not re.search(r"\shidden\b", row)]
    # the uplink (its alias says transit) and its device stay; everything else is hidden
    assert shown == ["core-router", "gi0/0/1"], shown
    assert 'id="filters" hidden' not in result.stdout  # the filter shows only with scripts
    page = (html / "index.html").read_text()
    assert 'id="filters" hidden' in page and page.count("data-text=") == len(rows)


SHARPNESS_PROBE = """<!DOCTYPE html><html><body style="margin:0">
<pre id="out" style="margin:0;height:4px;overflow:hidden"></pre>
<iframe id="page" width="%d" height="3000" style="border:0" src="%s"></iframe><script>
// Every graph image of the page: its pixels against the device pixels it covers.
document.getElementById("page").onload = function () {
  var doc = this.contentDocument, found = [];
  doc.querySelectorAll(".graph img").forEach(function (img) {
    found.push({src: img.getAttribute("src"), natural: img.naturalWidth,
                device: img.getBoundingClientRect().width * window.devicePixelRatio});
  });
  document.getElementById("out").textContent = JSON.stringify(
    {ratio: window.devicePixelRatio, images: found});
};
</script></body></html>"""


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian's chromium is not installed")
@pytest.mark.parametrize("width", [1400, 400])
def test_graphs_are_sharp_on_a_high_dpi_screen(long_site, tmp_path, width):
    """At a device scale factor of 2 every graph image has at least one pixel per device
    pixel it covers (the interface page's four periods, the device page's day graphs).
    Screenshots: test-artifacts/sharp-{width}-{page}.png."""
    _, html = long_site
    server = make_server(html, "127.0.0.1", 0)
    serve_in_thread(server)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    probes = []
    try:
        base = url_of(server)
        for page in ("interface", "device"):
            probe = html / f"sharp-{page}-{width}.html"
            probe.write_text(SHARPNESS_PROBE % (width, PAGES[page]))
            probes.append(probe)
            flags = ("--force-device-scale-factor=2", f"--window-size={width},1500")
            measured = probed(tmp_path, base + probe.name, *flags)
            assert measured["ratio"] == 2 and len(measured["images"]) >= 3, measured
            blurry = [i for i in measured["images"] if i["natural"] < i["device"] - 1]
            assert blurry == [], blurry
            screenshot(tmp_path, artifacts / f"sharp-{width}-{page}.png", base + PAGES[page],
                       *flags)
    finally:
        server.shutdown()
        server.server_close()
        for probe in probes:
            probe.unlink()
