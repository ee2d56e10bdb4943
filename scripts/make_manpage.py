"""Print monitor(1) in roff, generated from the argparse definitions (`monitor --help`).

    python scripts/make_manpage.py > monitor.1 && man ./monitor.1

The Debian package installs its output; a test checks that every subcommand and option of the
parser appears in it, so the page cannot drift from the program.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor import __version__
from monitor.cli import build_parser

EXTRA = {
    "FILES": [
        ("/etc/monitor/config.toml", "the config (the commented reference of every key; "
         "`monitor init-config` writes a fresh one)"),
        ("/var/lib/monitor", "data_dir of the packaged config: rrd/ (RRD files), state/ (check "
         "states, alert database, outbox), html/ (the web site)"),
        ("/lib/systemd/system/monitor.service", "the hardened systemd unit"),
        ("/usr/share/doc/monitor/examples/", "the demo config, the sudoers rule and the unit "
         "drop-in for SMART"),
    ],
    "ENVIRONMENT": [
        ("MONITOR_CONFIG", "the config file when --config is not given (else ./config.toml, "
         "else /etc/monitor/config.toml)"),
        ("NOTIFY_SOCKET", "set by systemd for Type=notify: `run` reports READY, RELOADING, "
         "STOPPING and WATCHDOG there"),
        ("JOURNAL_STREAM", "set by systemd when standard error goes to the journal: log lines "
         "carry <N> priority prefixes instead of time stamps"),
    ],
    "SIGNALS": [
        ("SIGTERM, SIGINT", "`run` lets running jobs finish their writes, then exits"),
        ("SIGHUP", "`run` reloads the config; an invalid one is refused and the running one kept"),
    ],
    "EXIT STATUS": [
        ("0", "success (services, status: every state OK)"),
        ("1", "a collector failed (collect); services, status: the worst state is WARNING"),
        ("2", "a bad config or bad arguments; services, status: the worst state is CRITICAL"),
        ("3", "services, status: the worst state is UNKNOWN"),
    ],
}


def roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in ".'" else line for line in text.splitlines())


def options(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> list[str]:
    """The options of `parser` but those named in `skip` (under a command: -h and the global
    options, which every command accepts and OPTIONS describes once)."""
    out = []
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS \
                or skip & set(action.option_strings):
            continue
        out += [".TP", f"\\fB{roff(formatter._format_action_invocation(action))}\\fR",
                roff(formatter._expand_help(action) if action.help else "")]
    return out


def subcommands(parser: argparse.ArgumentParser, prefix: str, skip: frozenset[str]) -> list[str]:
    out = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            usage = sub.format_usage().removeprefix("usage: ").strip()
            out += [".SS " + roff(f"{prefix} {name}".strip()), roff(helps.get(name) or ""), ".PP",
                    f"\\fB{roff(' '.join(usage.split()))}\\fR", ".PP",
                    roff(sub.description or ""), *options(sub, skip)]
            out += subcommands(sub, f"{prefix} {name}", skip)
    return out


def global_options(parser: argparse.ArgumentParser) -> frozenset[str]:
    return frozenset(o for a in parser._actions if not isinstance(a, argparse._SubParsersAction)
                     and not isinstance(a, argparse._VersionAction) for o in a.option_strings)


def manpage(parser: argparse.ArgumentParser) -> str:
    # SOURCE_DATE_EPOCH: the same page from the same source (reproducible builds).
    stamp = os.environ.get("SOURCE_DATE_EPOCH")
    day = datetime.datetime.fromtimestamp(int(stamp), datetime.UTC) if stamp else datetime.datetime.now()
    date = day.date().isoformat()
    lines = [f'.TH MONITOR 1 "{date}" "monitor {__version__}" "User Commands"',
             ".SH NAME", "monitor \\- " + roff(parser.description.split(":")[0].lower()),
             ".SH SYNOPSIS", "\\fBmonitor\\fR [\\fB\\-c\\fR \\fICONFIG\\fR] [\\fB\\-v\\fR|\\fB\\-q\\fR] "
             "\\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
             ".SH DESCRIPTION", roff(parser.description or ""), ".PP", roff(parser.epilog or ""),
             ".SH OPTIONS", *options(parser),
             ".SH COMMANDS", "Every command also takes \\fB\\-h\\fR (its help) and the options above "
             "but \\fB\\-\\-version\\fR, after its name as well as before it.",
             *subcommands(parser, "", global_options(parser))]
    for section, items in EXTRA.items():
        lines.append(f".SH {section}")
        for term, text in items:
            lines += [".TP", f"\\fB{roff(term)}\\fR", roff(text)]
    lines += [".SH SEE ALSO", "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBrrdtool\\fR(1), "
              "\\fBsmartctl\\fR(8); /usr/share/doc/monitor/README.md.gz"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage(build_parser()))
