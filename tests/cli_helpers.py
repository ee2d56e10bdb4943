"""Shared by the tests of the command line: a config that runs only the host collector, and
every subcommand of the parser."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

# Only `host` (quick, and the same on every machine); {data} and {interval} to be filled in.
HOST_ONLY = """\
[agent]
data_dir = "{data}"
interval = "{interval}"
jitter = "0s"
[disks]
enabled = false
[mailboxes]
enabled = false
[lists]
enabled = false
"""


def subcommands(parser: argparse.ArgumentParser,
                path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(("silence", "add"), its parser), ... for every subcommand, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subcommands(sub, (*path, name))
