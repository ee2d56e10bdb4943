"""DNS checks with dnspython's asyncio API: one query to one server, rcode, answers, time.

Point one check at each of your servers (primary and secondary) to see them separately.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from collectors.checks.common import Env, Outcome, clean, endpoint, limit_text, seconds_text
from monitor.config import ServiceCheck
from monitor.model import State


def _norm(text: str) -> str:
    return text.strip().rstrip(".").lower()


async def _server_address(host: str, port: int) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return infos[0][4][0]


async def run(check: ServiceCheck, env: Env) -> Outcome:
    port = check.port or 53
    assert check.query is not None
    question = f"{clean(check.query, 80)} {check.query_type}"
    where = f"DNS {endpoint(check.host, port)}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(check.timeout):
            address = await _server_address(check.host, port)
            query = dns.message.make_query(check.query, check.query_type)
            started = time.perf_counter()
            response = await dns.asyncquery.udp(query, address, port=port, timeout=check.timeout)
            if response.flags & dns.flags.TC:
                response = await dns.asyncquery.tcp(query, address, port=port, timeout=check.timeout)
            seconds = time.perf_counter() - started
    except (TimeoutError, dns.exception.Timeout):
        return Outcome(State.CRITICAL, f"{where} gave no answer for {question} within "
                       f"{limit_text(check.timeout)}")
    except socket.gaierror as exc:
        return Outcome(State.CRITICAL, f"{where}: the server's name cannot be resolved "
                       f"({clean(exc.strerror)})")
    except (OSError, dns.exception.DNSException) as exc:
        reason = clean(str(exc)) or type(exc).__name__
        return Outcome(State.CRITICAL, f"{where} failed for {question}: {reason}")

    rcode = dns.rcode.to_text(response.rcode())
    rdtype = dns.rdatatype.from_text(check.query_type)
    found = [rd.to_text() for rrset in response.answer if rrset.rdtype == rdtype for rd in rrset]
    shown = clean(", ".join(sorted(found)), 100) or "no records"  # sorted: rdatasets are sets
    took = f"in {seconds_text(seconds)}"
    if rcode != check.rcode:
        return Outcome(State.CRITICAL, f"{where} answered {rcode} instead of {check.rcode} for "
                       f"{question} {took}", seconds)
    if check.answers:
        have = {_norm(f) for f in found}
        missing = [a for a in check.answers if _norm(a) not in have]
        if missing:
            return Outcome(State.CRITICAL, f"{where} answered {question} with {shown} instead of "
                           f"{clean(', '.join(check.answers), 100)} {took}", seconds)
    elif rcode == "NOERROR" and not found:
        return Outcome(State.CRITICAL, f"{where} has no {check.query_type} record for "
                       f"{clean(check.query, 80)} ({took})", seconds)
    answer = shown if rcode == "NOERROR" else rcode
    return Outcome(State.OK, f"{where} answered {question} {took}: {answer}", seconds)
