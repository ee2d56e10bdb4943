"""Batches as JSON, for the stream of check results between nodes and the local buffer."""

from __future__ import annotations

import json
from typing import Any

from monitor.model import Batch, CheckResult, Kind, Measurement, State, Thresholds


def _measurement(m: Measurement) -> list[Any]:
    limits = m.thresholds
    return [m.target, m.instance, m.metric, m.value, m.kind.value, m.unit, m.timestamp, m.minimum,
            m.maximum, None if limits is None else
            [limits.warning, limits.critical, limits.low, limits.high]]


def _from_measurement(row: list[Any]) -> Measurement:
    target, instance, metric, value, kind, unit, timestamp, low, high, limits = row
    return Measurement(str(target), str(instance), str(metric),
                       None if value is None else float(value), Kind(kind), str(unit),
                       float(timestamp), low, high, None if limits is None else Thresholds(*limits))


def dumps(batch: Batch) -> str:
    """A batch as JSON: its checks (with the measurements each carries) and its other
    measurements."""
    carried = {id(m) for c in batch.checks for m in c.measurements}
    return json.dumps({
        "checks": [[c.target, c.check, c.state.value, c.message, c.timestamp,
                    [_measurement(m) for m in c.measurements]] for c in batch.checks],
        "measurements": [_measurement(m) for m in batch.measurements if id(m) not in carried],
    }, separators=(",", ":"))


def loads(text: str) -> Batch:
    """The batch of `dumps`; ValueError (or KeyError/TypeError) for anything else."""
    data = json.loads(text)
    batch = Batch()
    for target, check, state, message, timestamp, measurements in data["checks"]:
        batch.add(CheckResult(str(target), str(check), State(state), str(message),
                              tuple(_from_measurement(m) for m in measurements), float(timestamp)))
    batch.extend(_from_measurement(m) for m in data["measurements"])
    return batch
