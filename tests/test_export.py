"""Prometheus export: the textfile after `collect` and /metrics under `run`, both parsed with
prometheus_client's own parser."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import parse_config
from monitor.export import PrometheusExporter, metric_name
from monitor.model import Batch, CheckResult, Kind, Measurement, State
from monitor.status import StatusBook
from tests.cli_helpers import HOST_ONLY
from tests.conftest import MONITOR, ROOT

CONFIG = HOST_ONLY.replace("{interval}", "1m") + """\
[web]
interval = "0"
[export]
{export}
"""


def samples(text: str) -> dict[tuple[str, tuple], float]:
    families = list(text_string_to_metric_families(text))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_collect_writes_a_textfile_node_exporter_can_read(tmp_path: Path, write_config):
    textfile = tmp_path / "node-exporter/monitor.prom"
    config = write_config(CONFIG.format(data=tmp_path / "data", export=f'textfile = "{textfile}"'))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([*MONITOR, "-c", str(config), "collect", "--only", "host"], env=env,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert textfile.stat().st_mode & 0o777 == 0o644
    text = textfile.read_text()
    values = samples(text)
    host = os.uname().nodename
    assert values[("monitor_check_state", (("check", "host"), ("target", host)))] == 0
    assert ("monitor_load1", (("instance", ""), ("target", host))) in values
    kinds = types(text)
    assert kinds["monitor_check_state"] == "gauge" and kinds["monitor_load1"] == "gauge"
    # Host interface byte counters are raw counters: counter type, _total, "bytes".
    assert kinds["monitor_in_bytes"] == "counter"
    assert any(name == "monitor_in_bytes_total" for name, _ in values)
    # node_exporter's textfile collector refuses samples with time stamps.
    assert all(s.timestamp is None for f in text_string_to_metric_families(text) for s in f.samples)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, until: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while until not in body and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
        except OSError:
            time.sleep(0.2)
    return body


NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")


@pytest.mark.skipif(not NODE_EXPORTER.exists(),
                    reason="prometheus-node-exporter is not installed (see the Makefile)")
def test_debians_node_exporter_serves_the_textfile(tmp_path: Path, write_config):
    """Debian's node_exporter with only its textfile collector, on the directory the agent
    writes: it reads the file without a scrape error and serves the agent's metrics."""
    directory = tmp_path / "node-exporter"
    config = write_config(CONFIG.format(data=tmp_path / "data",
                                        export=f'textfile = "{directory}/monitor.prom"'))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([*MONITOR, "-c", str(config), "collect", "--only", "host"], env=env,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    port = free_port()
    exporter = subprocess.Popen(
        [str(NODE_EXPORTER), "--collector.disable-defaults", "--collector.textfile",
         f"--collector.textfile.directory={directory}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        body = scrape(f"http://127.0.0.1:{port}/metrics", "monitor_check_state")
    finally:
        exporter.terminate()
        _, err = exporter.communicate(timeout=30)
    values = samples(body)
    assert values[("node_textfile_scrape_error", ())] == 0, err[-2000:]
    host = os.uname().nodename
    assert values[("monitor_check_state", (("check", "host"), ("target", host)))] == 0
    assert any(name == "monitor_in_bytes_total" for name, _ in values)
    assert types(body)["monitor_in_bytes"] == "counter"


def test_run_serves_metrics_on_listen(tmp_path: Path, write_config):
    port = free_port()
    config = write_config(CONFIG.format(data=tmp_path / "data",
                                        export=f'listen = "127.0.0.1:{port}"'))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*MONITOR, "-c", str(config), "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        body = scrape(f"http://127.0.0.1:{port}/metrics", "monitor_load1")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "monitor_load1" in body, err
    assert types(body)["monitor_check_state"] == "gauge"
    assert proc.returncode == 0, err


async def test_hostile_names_are_escaped_and_stale_values_dropped(tmp_path: Path):
    config = parse_config(f'[export]\ntextfile = "{tmp_path}/m.prom"\n', base_dir=tmp_path)
    status = StatusBook(tmp_path / "status.json")
    now = time.time()
    status.update([CheckResult('evil"\n\\target', "if Gi0/1 \u202e", State.CRITICAL, "down",
                               timestamp=now)], 60)
    exporter = PrometheusExporter(config.export, status, {"snmp": 60.0})
    await exporter.consume("snmp", Batch(measurements=[
        Measurement('evil"\n\\target', "Gi0/1", "in_octets", 125.0, Kind.GAUGE, "B/s", now),
        Measurement("old", "x", "in_octets", 1.0, Kind.GAUGE, "B/s", now - 3600),
        Measurement("r", "", "weird metric-name!", 1.0, Kind.GAUGE, "", now),
    ]))
    values = samples((tmp_path / "m.prom").read_text())
    # Quotes and backslashes escaped by the format; control and bidi characters removed.
    target = 'evil" \\target'
    assert values[("monitor_check_state", (("check", "if Gi0/1"), ("target", target)))] == 2
    assert values[("monitor_in_bytes_per_second", (("instance", "Gi0/1"),
                                                   ("target", target)))] == 125.0
    assert ("monitor_in_bytes_per_second", (("instance", "x"), ("target", "old"))) not in values
    assert ("monitor_weird_metric_name", (("instance", ""), ("target", "r"))) in values


@pytest.mark.parametrize(("metric", "kind", "unit", "name"), [
    ("response_seconds", Kind.GAUGE, "s", "monitor_response_seconds"),
    ("in_octets", Kind.DERIVE, "B", "monitor_in_bytes"),
    ("out_ucast_packets", Kind.GAUGE, "/s", "monitor_out_ucast_packets_per_second"),
    ("used_percent", Kind.GAUGE, "%", "monitor_used_percent"),
])
def test_metric_names_follow_prometheus_conventions(metric, kind, unit, name):
    assert metric_name(Measurement("t", "", metric, 1.0, kind, unit)) == name
