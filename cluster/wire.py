"""Batches as JSON, for the stream of check results between nodes and the local buffer."""

from __future__ import annotations

import json

from monitor.model import Batch, CheckResult, State, measurement_from_row, measurement_row


def dumps(batch: Batch) -> str:
    """A batch as JSON: its checks (with the measurements each carries) and its other
    measurements."""
    carried = {id(m) for c in batch.checks for m in c.measurements}
    return json.dumps({
        "checks": [[c.target, c.check, c.state.value, c.message, c.timestamp,
                    [measurement_row(m) for m in c.measurements]] for c in batch.checks],
        "measurements": [measurement_row(m) for m in batch.measurements if id(m) not in carried],
    }, separators=(",", ":"))


def loads(text: str) -> Batch:
    """The batch of `dumps`; ValueError (or KeyError/TypeError) for anything else."""
    data = json.loads(text)
    batch = Batch()
    for target, check, state, message, timestamp, measurements in data["checks"]:
        batch.add(CheckResult(str(target), str(check), State(state), str(message),
                              tuple(measurement_from_row(m) for m in measurements), float(timestamp)))
    batch.extend(measurement_from_row(m) for m in data["measurements"])
    return batch
