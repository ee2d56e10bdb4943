"""dns: one query (name, type) to one server with dnspython's asyncio API; rcode and answers.

An SOA check of several servers also compares each secondary's serial with the primary's (the
first server). The query carries EDNS0 with a 1232-byte payload, as dig sends it (the DNS flag day size), so
answers up to that size come over UDP where TCP/53 is filtered; a truncated answer is asked
again over TCP, as resolvers do. The UDP socket is connected, so a port where nothing listens
is reported from the kernel's ICMP port unreachable at once, not after the timeout.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.rcode
import dns.rdatatype

from collectors.services_base import Outcome, Stage, hostport, look_up, secs
from monitor.config import ServiceCheck
from monitor.model import CheckResult, State
from monitor.text import clean

EDNS_PAYLOAD = 1232


def _norm(text: str) -> str:
    return text.strip().lower().rstrip(".").replace('"', "")


async def probe_dns(check: ServiceCheck, server: str, stage: Stage) -> Outcome:
    port = check.port or 53
    where = f"DNS {hostport(server, port)}"
    question = f"{clean(check.query or '', 80)} {check.query_type}"
    address = str((await look_up(check, stage, server, port, socket.SOCK_DGRAM))[0][1][0])
    stage.doing = "answer"
    assert check.query is not None  # the config requires it of a dns check
    query = dns.message.make_query(check.query, dns.rdatatype.from_text(check.query_type),
                                   use_edns=0, payload=EDNS_PAYLOAD, want_dnssec=check.dnssec)
    if check.dnssec:
        query.flags |= dns.flags.AD  # RFC 6840: ask for the AD bit
    start = time.monotonic()
    over_tcp = False
    try:
        # dnspython retries over UDP until its own timeout; ours bounds the whole check.
        backend = dns.asyncbackend.get_backend("asyncio")
        family = dns.inet.af_for_address(address)
        async with await backend.make_socket(family, socket.SOCK_DGRAM, 0, None,
                                             (address, port)) as sock:
            response = await dns.asyncquery.udp(query, address, port=port, timeout=check.timeout,
                                                sock=sock)
        if response.flags & dns.flags.TC:
            over_tcp = True
            stage.doing = "answer over TCP"
            response = await dns.asyncquery.tcp(query, address, port=port, timeout=check.timeout)
    except ConnectionRefusedError:
        elapsed = time.monotonic() - start
        if over_tcp:
            return Outcome(State.CRITICAL, f"{where} truncated its UDP answer to {question} and "
                           f"refused the connection over TCP in {secs(elapsed)}", elapsed)
        return Outcome(State.CRITICAL, f"{where} refused the query {question} over UDP (port "
                       f"unreachable) in {secs(elapsed)}", elapsed)
    except dns.exception.Timeout:
        return Outcome(State.CRITICAL, f"{where} did not answer {question} within "
                       f"{check.timeout:g} s")
    except dns.exception.DNSException as exc:
        return Outcome(State.CRITICAL, f"{where} sent an unusable answer to {question}: "
                       f"{clean(str(exc))}", time.monotonic() - start)
    elapsed = time.monotonic() - start
    rcode = dns.rcode.to_text(response.rcode())
    rcode_note = " (truncated)" if response.flags & dns.flags.TC and not response.answer else ""
    if over_tcp:
        question += " (over TCP: the UDP answer was truncated)"
    if rcode != check.expect_rcode:
        return Outcome(State.CRITICAL, f"{where} answered {rcode} instead of {check.expect_rcode} "
                       f"for {question}{rcode_note} in {secs(elapsed)}", elapsed)
    if check.authoritative and not response.flags & dns.flags.AA:
        return Outcome(State.CRITICAL, f"{where} answered {question} without the authoritative "
                       f"flag (AA): it does not serve the zone itself, in {secs(elapsed)}",
                       elapsed)
    if check.dnssec and not response.flags & dns.flags.AD:
        return Outcome(State.CRITICAL, f"{where} answered {question} without the AD flag: not "
                       f"DNSSEC-validated (an unsigned zone, or not a validating resolver) in "
                       f"{secs(elapsed)}", elapsed)
    wanted_type = dns.rdatatype.from_text(check.query_type)
    metrics: dict[str, tuple[float | None, str]] = {}
    soa = [rd for rrset in response.answer if rrset.rdtype == dns.rdatatype.SOA for rd in rrset]
    if wanted_type == dns.rdatatype.SOA and soa:
        metrics["soa_serial"] = (float(soa[0].serial), "")
    answers = sorted(rd.to_text() for rrset in response.answer if rrset.rdtype == wanted_type
                     for rd in rrset)
    shown = ", ".join(clean(a, 60) for a in answers[:4]) + (" ..." if len(answers) > 4 else "")
    if check.expect_answers:
        got = {_norm(a) for a in answers}
        missing = [a for a in check.expect_answers if _norm(a) not in got]
        if missing:
            return Outcome(State.CRITICAL, f"{where} answered {question} with "
                           f"{shown or 'no records'} instead of {', '.join(missing)} in "
                           f"{secs(elapsed)}", elapsed)
    validated = " (DNSSEC-validated)" if check.dnssec else ""
    return Outcome(State.OK, f"{where} answered {question} {rcode} "
                   f"{shown or '(no records)'}{validated} in {secs(elapsed)}", elapsed, metrics)


def _serial(result: CheckResult) -> int | None:
    value = next((m.value for m in result.measurements if m.metric == "soa_serial"), None)
    return None if value is None else int(value)


def compare_serials(check: ServiceCheck, results: list[CheckResult]) -> list[CheckResult]:
    """An SOA check of several servers (`results` in the order of check.servers): each
    secondary's serial against the primary's (the first server). A secondary that answers with
    another serial is stale (or the primary went back): a WARNING naming both serials."""
    if dns.rdatatype.from_text(check.query_type) != dns.rdatatype.SOA or len(results) < 2:
        return results
    primary = _serial(results[0])
    if primary is None:
        return results
    out = [results[0]]
    for result in results[1:]:
        serial = _serial(result)
        if result.state != State.OK or serial is None or serial == primary:
            out.append(result)
            continue
        # RFC 1982: serials wrap at 2**32; "behind" is less in serial-number arithmetic.
        behind = 0 < (primary - serial) % 2**32 < 2**31
        out.append(replace(result, state=State.WARNING, message=(
            f"{result.message}; serial {serial} is {'behind' if behind else 'ahead of'} the "
            f"primary {hostport(results[0].target, check.port or 53)}'s {primary}")))
    return out
