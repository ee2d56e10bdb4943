"""The agent's handling of collectors: failures become UNKNOWN self-checks, recover, time out."""

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monitor.agent import Agent
from monitor.config import parse_config
from monitor.model import Batch, CheckResult, Kind, Measurement, State


@dataclass
class ScriptedCollector:
    """A collector whose runs follow a script: a Batch to return, an exception, or "hang"."""

    script: list
    name: str = "scripted"
    interval: float = 10.0
    runs: int = field(default=0)

    async def collect(self) -> Batch:
        step = self.script[min(self.runs, len(self.script) - 1)]
        self.runs += 1
        if step == "hang":
            await asyncio.sleep(3600)
        if isinstance(step, Exception):
            raise step
        return step


def agent_with(tmp_path: Path, collector, **kwargs) -> Agent:
    config = parse_config('[host]\nenabled = false\n[disks]\nenabled = false\n', base_dir=tmp_path)
    config.agent.data_dir = tmp_path
    config.storage.rrd_dir = tmp_path / "rrd"
    agent = Agent(config, **kwargs)
    agent.collectors = [collector]
    return agent


def self_check(agent: Agent):
    return {s.check: s for s in agent.status.all()}["collector scripted"]


async def test_failure_is_unknown_and_success_recovers(tmp_path: Path):
    good = Batch([Measurement("box", "", "temperature", 21.5, Kind.GAUGE, "C", 1_700_000_000)],
                 [CheckResult("box", "temp", State.WARNING, "warm")])
    collector = ScriptedCollector([RuntimeError("SNMP engine broke"), good])
    agent = agent_with(tmp_path, collector)
    with pytest.raises(RuntimeError):
        await agent.run_collector(collector)
    status = self_check(agent)
    assert status.state is State.UNKNOWN and "SNMP engine broke" in status.message
    await agent.run_collector(collector)
    assert self_check(agent).state is State.OK
    assert agent.store.info("box", "").metrics == {"temperature": "temperature"}
    assert {s.check for s in agent.status.all()} == {"collector scripted", "temp"}
    await agent.close()


async def test_sinks_see_every_batch_and_a_failing_sink_does_not_stop_others(tmp_path: Path):
    batch = Batch(checks=[CheckResult("box", "x", State.OK, "fine")])
    collector = ScriptedCollector([batch])
    agent = agent_with(tmp_path, collector)
    seen = []

    async def broken(job, b):
        raise ValueError("sink bug")

    async def recorder(job, b):
        seen.append((job, [c.check for c in b.checks]))

    agent.sinks = [broken, recorder]
    await agent.run_collector(collector)
    assert seen == [("scripted", ["x", "collector scripted"])]
    await agent.close()


async def test_a_hanging_collector_is_cut_off(tmp_path: Path):
    collector = ScriptedCollector(["hang"], interval=0.01)
    agent = agent_with(tmp_path, collector, min_run_limit=0.2)
    with pytest.raises(TimeoutError):
        await agent.run_collector(collector)
    status = self_check(agent)
    assert status.state is State.UNKNOWN and "did not finish" in status.message
    await agent.close()


def test_status_book_expires_checks_nobody_reports(tmp_path: Path):
    from monitor.status import StatusBook

    book = StatusBook(tmp_path / "status.json")
    book.update([CheckResult("host", "disk /mnt/old", State.OK, "fine", timestamp=1000.0)], 60)
    book.update([CheckResult("host", "disk /", State.OK, "fine", timestamp=1000.0)], 3600)
    assert book.expire(1000.0 + 3 * 60 - 1) == []
    dropped = book.expire(1000.0 + 3 * 60 + 1)
    assert [s.check for s in dropped] == ["disk /mnt/old"]
    book.save()
    assert [s.check for s in StatusBook(tmp_path / "status.json").all()] == ["disk /"]


async def test_close_releases_collector_resources(tmp_path: Path):
    closed = []

    @dataclass
    class Holding(ScriptedCollector):
        def close(self) -> None:
            closed.append(self.name)

    agent = agent_with(tmp_path, Holding([Batch()]))
    await agent.close()
    assert closed == ["scripted"]


def test_status_file_of_another_shape_starts_afresh(tmp_path: Path, caplog):
    from monitor.status import StatusBook

    path = tmp_path / "status.json"
    for text in ('{"checks": [{"target": "h", "state": 9}]}', '{"checks": [{"unknown": 1}]}',
                 '{"checks": [1, 2]}', '[]'):
        path.write_text(text)
        book = StatusBook(path)  # the agent still starts
        assert book.all() == []
    assert "states start afresh" in caplog.text
