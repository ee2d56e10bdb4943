"""Block-list (DNSBL) lookups of the shop's own outbound addresses ([blocklists]).

An address a.b.c.d is listed in zone Z when d.c.b.a.Z has an A record (a return code in
127.0.0.0/8 whose meaning the list documents); its TXT record usually says why and where to
delist. IPv6 addresses are looked up nibble by nibble (RFC 5782).

Two failure modes of the lists themselves must not page anyone:
- a list that answers for everything (a list that shut down and wildcards its zone, or one that
  punishes a resolver): RFC 5782 says 127.0.0.1 is never listed, so each run asks for it first;
  when it is "listed" the list's answers are ignored and the list is a WARNING;
- a list that refuses the resolver (Spamhaus answers 127.255.255.252-255 to public resolvers):
  such codes are never a listing, the list is a WARNING naming the code.
A list that does not answer in time is a WARNING too, and its addresses are asked again next run.

Lookups go through the configured resolver (or the system's) with dnspython, at most
`concurrency` at a time; an answer is kept for `cache` seconds (lists limit queries per resolver).

Naming contract: one check per configured address or range (target = the address or range,
check "blocklists": CRITICAL when listed anywhere, saying where, what the code means and where
to delist), one check per list (target = the zone, check "dnsbl"), measurements target
"blocklists", instance = address or range, metric listed_addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename

from monitor.config import Blocklist, BlocklistsConfig, Config
from monitor.model import Batch, CheckResult, Collector, Measurement, State
from monitor.text import clean

TARGET = "blocklists"
NEVER_LISTED = "127.0.0.1"  # RFC 5782 section 5: a list must not list it
REFUSED = ipaddress.ip_network("127.255.255.0/24")  # "your resolver may not query us" codes
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def query_name(address: IP, zone: str) -> str:
    """d.c.b.a.zone (IPv4) or the 32 reversed nibbles (IPv6) under zone."""
    reverse = dns.reversename.from_address(str(address)).to_text(omit_final_dot=True)
    stem = reverse.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{stem}.{zone}."


@dataclass(frozen=True)
class Answer:
    """What one list said about one address: its return codes (empty: not listed) and TXT."""

    codes: tuple[str, ...] = ()
    text: str = ""
    error: str = ""  # "" when the list answered


class Lookup:
    """Asks one resolver, at most `concurrency` queries at a time, answers cached."""

    def __init__(self, config: BlocklistsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.resolver = dns.asyncresolver.Resolver(configure=config.resolver is None)
        if config.resolver is not None:
            self.resolver.nameservers = [config.resolver]
            self.resolver.port = config.port
        self.resolver.cache = None  # ours below keeps answers for `cache`, whatever their TTL
        self.cached: dict[str, tuple[float, Answer]] = {}
        self.semaphore = asyncio.Semaphore(config.concurrency)

    async def ask(self, name: str) -> Answer:
        hit = self.cached.get(name)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        async with self.semaphore:
            answer = await self._query(name)
        if not answer.error:
            self.cached[name] = (self.clock() + self.config.cache, answer)
        return answer

    async def _query(self, name: str) -> Answer:
        timeout = self.config.timeout
        try:
            a = await self.resolver.resolve(name, "A", lifetime=timeout, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Answer()
        except dns.exception.Timeout:
            return Answer(error=f"no answer within {timeout:g} s")
        except dns.resolver.NoNameservers as exc:
            return Answer(error=f"the resolver failed ({clean(exc, 120)})")
        except dns.exception.DNSException as exc:
            return Answer(error=clean(exc, 120))
        codes = tuple(sorted({r.address for r in a}, key=ipaddress.ip_address))
        text = ""
        try:
            txt = await self.resolver.resolve(name, "TXT", lifetime=timeout, search=False)
            text = " ".join(b.decode("utf-8", "replace") for r in txt for b in r.strings)
        except dns.exception.DNSException:
            pass  # the reason is a courtesy; the A record is the listing
        return Answer(codes, clean(text, 200))


@dataclass
class ListVerdict:
    """Whether a list's answers can be believed this run."""

    blocklist: Blocklist
    usable: bool = True
    problem: str = ""
    silent: bool = False  # unusable because it did not answer (not because it lies)
    errors: list[str] = field(default_factory=list)


def _meaning(blocklist: Blocklist, code: str) -> str:
    return blocklist.codes.get(code, "listed (code not documented here)")


async def probe_list(lookup: Lookup, blocklist: Blocklist) -> ListVerdict:
    """Ask for 127.0.0.1, which no honest list lists."""
    answer = await lookup.ask(query_name(ipaddress.ip_address(NEVER_LISTED), blocklist.zone))
    if answer.error:
        return ListVerdict(blocklist, False, f"did not answer for the test address "
                           f"{NEVER_LISTED}: {answer.error}", silent=True)
    refused = [c for c in answer.codes if ipaddress.ip_address(c) in REFUSED]
    if refused:
        return ListVerdict(blocklist, False, f"refuses queries from this resolver (return code "
                           f"{refused[0]}); use a resolver of your own, not a public one")
    if answer.codes:
        return ListVerdict(blocklist, False, f"answers for everything: the test address "
                           f"{NEVER_LISTED}, which no list may list, is \"listed\" "
                           f"({', '.join(answer.codes)}); its answers are ignored (the list may "
                           "have shut down)")
    return ListVerdict(blocklist)


def _addresses(entry: str) -> list[IP]:
    network = ipaddress.ip_network(entry, strict=False)
    return [network.network_address] if network.num_addresses == 1 else list(network)


async def check_entry(lookup: Lookup, entry: str, verdicts: list[ListVerdict],
                      now: float) -> Batch:
    """One configured address or range against every usable list."""
    usable = [v for v in verdicts if v.usable]
    addresses = _addresses(entry)
    pairs = [(a, v) for a in addresses for v in usable]
    answers = await asyncio.gather(*(lookup.ask(query_name(a, v.blocklist.zone)) for a, v in pairs))
    listings: list[str] = []
    listed: set[IP] = set()
    for (address, verdict), answer in zip(pairs, answers, strict=True):
        bl = verdict.blocklist
        if answer.error:
            verdict.errors.append(f"{address}: {answer.error}")
            continue
        codes = [c for c in answer.codes if ipaddress.ip_address(c) not in REFUSED]
        if not codes:
            continue
        listed.add(address)
        means = "; ".join(f"{c} = {_meaning(bl, c)}" for c in codes)
        why = f' ("{answer.text}")' if answer.text else ""
        delist = f", delist at {bl.delist}" if bl.delist else ""
        listings.append(f"{address} is listed in {bl.zone}: {means}{why}{delist}")
    unanswered = {v.blocklist.zone for (_, v), a in zip(pairs, answers, strict=True) if a.error}
    silent = sorted(unanswered | {v.blocklist.zone for v in verdicts if v.silent})
    size = f" ({len(addresses)} addresses)" if len(addresses) > 1 else ""
    if listings:
        shown = listings[:5] + ([f"and {len(listings) - 5} more listing(s)"] if len(listings) > 5 else [])
        state, message = State.CRITICAL, "; ".join(shown)
    elif len(unanswered) == len(usable):
        state, message = State.UNKNOWN, f"{entry}{size}: no block list could be asked"
    else:
        state = State.OK
        message = (f"{entry}{size} is listed in none of {len(usable) - len(unanswered)} "
                   "block list(s)")
        if silent:
            message += f" ({', '.join(silent)} did not answer)"
    batch = Batch()
    batch.add(CheckResult(entry, "blocklists", state, message, timestamp=now, measurements=(
        Measurement(TARGET, entry, "listed_addresses", float(len(listed)), timestamp=now,
                    minimum=0),)))
    return batch


@dataclass
class BlocklistCollector:
    config: BlocklistsConfig
    interval: float
    clock: Callable[[], float] = time.time
    name: str = "blocklists"
    lookup: Lookup | None = None

    async def collect(self) -> Batch:
        if self.lookup is None:  # made here: its semaphore belongs to the running loop
            self.lookup = Lookup(self.config)
        lookup = self.lookup
        now = self.clock()
        verdicts = list(await asyncio.gather(*(probe_list(lookup, b) for b in self.config.lists)))
        batch = Batch()
        for part in await asyncio.gather(*(check_entry(lookup, e, verdicts, now)
                                           for e in self.config.addresses)):
            batch.add(part)
        for verdict in verdicts:
            zone = verdict.blocklist.zone
            if not verdict.usable:
                state, message = State.WARNING, f"block list {zone} {verdict.problem}"
            elif verdict.errors:
                state = State.WARNING
                message = (f"block list {zone} did not answer for {len(verdict.errors)} "
                           f"address(es) (first: {verdict.errors[0]}); asked again next run")
            else:
                state, message = State.OK, f"block list {zone} answers"
            batch.add(CheckResult(zone, "dnsbl", state, message, timestamp=now))
        return batch


def build(config: Config) -> list[Collector]:
    cfg = config.blocklists
    if not cfg.enabled:
        return []
    return [BlocklistCollector(cfg, cfg.interval)]
