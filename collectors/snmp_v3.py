"""SNMPv3 messages with the User-based Security Model, framed by our own BER codec.

RFC 3412 (the message), RFC 3414 (USM: keys, HMAC-MD5/SHA-96, DES, discovery, time window),
RFC 3826 (AES-128), RFC 7860 (HMAC-SHA-2), and the AES-192/256 drafts net-snmp offers
(Blumenthal's key extension, net-snmp "AES-192"/"AES-256"; Reeder's, net-snmp "AES-192-C",
Cisco's). Why not pysnmp's engine: three quarters of its CPU per poll went to pyasn1 encoding
and decoding the message, ~20x what v2c costs; here the message is framed in a few microseconds
and the varbinds go through `snmp_ber`'s decoder, like v2c's.

What comes from elsewhere: hashes and HMAC (the standard library), ciphers (the `cryptography`
package). Keys are made from pass phrases once per engine ID (kept in `UsmEngine`, made in a
thread: a 1 MB hash each), checked against RFC 3414's vectors and pysnmp's code in the tests.
Malformed input raises `BerError`; a reply whose digest is wrong raises `WrongDigest`, one that
does not decrypt `CannotDecrypt` (both `BerError`s).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from collectors import snmp_ber as ber
from collectors.snmp_ber import BerError, Oid

# msgFlags (RFC 3412 6.4)
AUTH_FLAG, PRIV_FLAG, REPORTABLE_FLAG = 0x01, 0x02, 0x04
USM = 3  # msgSecurityModel
MAX_MESSAGE_SIZE = 65507  # what we accept (msgMaxSize): the largest UDP payload
MAX_ENGINE_ID, MAX_USER_NAME = 32, 32  # RFC 3411 SnmpEngineID, RFC 3414 usmUserName
MAX_INT31 = 2**31 - 1
TIME_WINDOW = 150  # seconds (RFC 3414 3.2.7)
MAX_KEPT_KEYS = 8  # (user, engine ID) pairs whose localised keys a device's engine keeps

# usmStats (RFC 3414 5) and the other counters an agent reports with, by the name that says what
# went wrong.
USM_STATS = (1, 3, 6, 1, 6, 3, 15, 1, 1)
REPORTS: dict[Oid, str] = {
    (*USM_STATS, 1, 0): "unsupportedSecLevel",
    (*USM_STATS, 2, 0): "notInTimeWindow",
    (*USM_STATS, 3, 0): "unknownUserName",
    (*USM_STATS, 4, 0): "unknownEngineID",
    (*USM_STATS, 5, 0): "wrongDigest",
    (*USM_STATS, 6, 0): "decryptionError",
    (1, 3, 6, 1, 6, 3, 11, 2, 1, 1, 0): "unknownSecurityModel",
    (1, 3, 6, 1, 6, 3, 11, 2, 1, 2, 0): "invalidMessage",
    (1, 3, 6, 1, 6, 3, 11, 2, 1, 3, 0): "unknownPDUHandler",
    (1, 3, 6, 1, 6, 3, 12, 1, 4, 0): "unavailableContext",
    (1, 3, 6, 1, 6, 3, 12, 1, 5, 0): "unknownContext",
}


class WrongDigest(BerError):
    """An authenticated message whose HMAC is not the one our key gives."""


class CannotDecrypt(BerError):
    """An encrypted scoped PDU that does not decrypt to one with our key."""


@dataclass(frozen=True, slots=True)
class AuthProtocol:
    hash_name: str  # hashlib's name: the HMAC's hash and the key localisation's
    digest_length: int  # bytes of the HMAC sent (msgAuthenticationParameters)


@dataclass(frozen=True, slots=True)
class PrivProtocol:
    cipher: str  # "des" (CBC) or "aes" (CFB-128)
    key_length: int
    extension: str = ""  # how a key shorter than key_length grows: "blumenthal" or "reeder"


AUTH_PROTOCOLS = {
    "md5": AuthProtocol("md5", 12), "sha": AuthProtocol("sha1", 12),
    "sha224": AuthProtocol("sha224", 16), "sha256": AuthProtocol("sha256", 24),
    "sha384": AuthProtocol("sha384", 32), "sha512": AuthProtocol("sha512", 48),
}
PRIV_PROTOCOLS = {
    "des": PrivProtocol("des", 16), "aes": PrivProtocol("aes", 16), "aes128": PrivProtocol("aes", 16),
    "aes192": PrivProtocol("aes", 24, "blumenthal"), "aes256": PrivProtocol("aes", 32, "blumenthal"),
    "aes192c": PrivProtocol("aes", 24, "reeder"), "aes256c": PrivProtocol("aes", 32, "reeder"),
}


@dataclass(frozen=True, slots=True)
class UsmUser:
    """A USM user as configured: protocol names as in the config ("none", "sha256", "aes", ...)."""

    name: str
    auth_protocol: str = "none"
    auth_key: str | None = None
    priv_protocol: str = "none"
    priv_key: str | None = None

    @property
    def flags(self) -> int:
        """The security level as msgFlags bits."""
        return ((AUTH_FLAG if self.auth_protocol != "none" else 0)
                | (PRIV_FLAG if self.priv_protocol != "none" else 0))

    @property
    def level(self) -> str:
        return {0: "noAuthNoPriv", AUTH_FLAG: "authNoPriv",
                AUTH_FLAG | PRIV_FLAG: "authPriv"}[self.flags]


@functools.lru_cache(maxsize=64)
def master_key(passphrase: bytes, hash_name: str) -> bytes:
    """RFC 3414 A.2.1: the hash of the passphrase repeated over 1 MB (what pysnmp's
    localkey.hash_passphrase and net-snmp compute 64 bytes at a time, here in one call: half the
    CPU, and hashlib lets go of the GIL). Cached: many devices share their credentials, and the
    key is a function of them alone."""
    if not passphrase:
        raise ValueError("an empty pass phrase")
    stream = passphrase * (2**20 // len(passphrase) + 1)
    return hashlib.new(hash_name, memoryview(stream)[:2**20]).digest()


def localize_key(master: bytes, engine_id: bytes, hash_name: str) -> bytes:
    """RFC 3414 A.2.2: a master key made specific to one engine."""
    return hashlib.new(hash_name, master + engine_id + master).digest()


def password_to_key(passphrase: str, engine_id: bytes, hash_name: str) -> bytes:
    return localize_key(master_key(passphrase.encode("utf-8"), hash_name), engine_id, hash_name)


def localized_priv_key(passphrase: str, engine_id: bytes, hash_name: str, priv: PrivProtocol) -> bytes:
    """The privacy key: localised with the auth protocol's hash, then extended to the cipher's
    key length the way the protocol's draft says (Blumenthal: append the hash of the key so far;
    Reeder: append the key so far turned into a key again, as if it were a passphrase)."""
    key = password_to_key(passphrase, engine_id, hash_name)
    while len(key) < priv.key_length:
        if priv.extension == "blumenthal":
            key += hashlib.new(hash_name, key).digest()
        elif priv.extension == "reeder":
            key += localize_key(master_key(key, hash_name), engine_id, hash_name)
        else:
            raise ValueError(f"a {hash_name} key is too short for this cipher")
    return key[:priv.key_length]


class Keys:
    """A user's keys localised to one engine ID, and the per-message operations with them."""

    def __init__(self, user: UsmUser, engine_id: bytes) -> None:
        self.auth = AUTH_PROTOCOLS.get(user.auth_protocol)
        self.priv = PRIV_PROTOCOLS.get(user.priv_protocol)
        self.digest_length = self.auth.digest_length if self.auth else 0
        self._mac: hmac.HMAC | None = None
        self._priv_key = b""
        if self.auth is not None:
            assert user.auth_key is not None
            key = password_to_key(user.auth_key, engine_id, self.auth.hash_name)
            self._mac = hmac.new(key, digestmod=self.auth.hash_name)
            if self.priv is not None:
                assert user.priv_key is not None
                self._priv_key = localized_priv_key(user.priv_key, engine_id, self.auth.hash_name,
                                                    self.priv)

    def sign(self, message: bytes) -> bytes:
        """The HMAC of a message whose authentication parameters are zeros."""
        assert self._mac is not None
        mac = self._mac.copy()
        mac.update(message)
        return mac.digest()[:self.digest_length]

    def encrypt(self, plain: bytes, boots: int, engine_time: int, salt: int) -> tuple[bytes, bytes]:
        """(encrypted data, msgPrivacyParameters). `salt`: a number never used before with this key."""
        assert self.priv is not None
        key = self._priv_key
        if self.priv.cipher == "des":  # RFC 3414 8.1.1.1: salt = boots + a local counter
            params = boots.to_bytes(4, "big") + (salt & 0xFFFFFFFF).to_bytes(4, "big")
            iv = bytes(a ^ b for a, b in zip(params, key[8:16], strict=True))
            encryptor = Cipher(TripleDES(key[:8] * 3), modes.CBC(iv)).encryptor()
            plain += bytes(-len(plain) % 8)
        else:  # RFC 3826 3.1.2.1: IV = boots + time + salt
            params = (salt & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
            iv = boots.to_bytes(4, "big") + engine_time.to_bytes(4, "big") + params
            encryptor = Cipher(algorithms.AES(key), CFB(iv)).encryptor()
        return encryptor.update(plain) + encryptor.finalize(), params

    def decrypt(self, data: bytes, boots: int, engine_time: int, params: bytes) -> bytes:
        if self.priv is None:
            raise CannotDecrypt("an encrypted reply to a request without privacy")
        if len(params) != 8:
            raise CannotDecrypt(f"privacy parameters of {len(params)} bytes (8 expected)")
        key = self._priv_key
        if self.priv.cipher == "des":
            if len(data) % 8:
                raise CannotDecrypt("DES data not a multiple of 8 bytes")
            iv = bytes(a ^ b for a, b in zip(params, key[8:16], strict=True))
            decryptor = Cipher(TripleDES(key[:8] * 3), modes.CBC(iv)).decryptor()
        else:
            iv = boots.to_bytes(4, "big") + engine_time.to_bytes(4, "big") + params
            decryptor = Cipher(algorithms.AES(key), CFB(iv)).decryptor()
        return decryptor.update(data) + decryptor.finalize()


@dataclass
class UsmEngine:
    """What we know of one device's SNMP engine (RFC 3414 2.3): its engine ID, boots and time as
    last heard, and the user's keys localised to it. Kept per device across polls and config
    reloads, so discovery and key localisation (~a 1 MB hash per key) happen once, not per poll.
    """

    engine_id: bytes = b""
    boots: int = 0
    latest_time: int = 0  # latestReceivedEngineTime
    synced_at: float = 0.0  # time.monotonic() when latest_time was heard
    _keys: dict[tuple[UsmUser, bytes], Keys] = field(default_factory=dict, repr=False)
    _salt: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "big"), repr=False)

    def discovered(self, engine_id: bytes, boots: int, engine_time: int) -> None:
        self.engine_id = engine_id
        self.heard(boots, engine_time)

    def heard(self, boots: int, engine_time: int) -> None:
        self.boots, self.latest_time, self.synced_at = boots, engine_time, time.monotonic()

    def now(self) -> tuple[int, int]:
        """Our notion of the engine's (boots, time)."""
        if not self.engine_id:
            return 0, 0
        return self.boots, min(MAX_INT31, self.latest_time + int(time.monotonic() - self.synced_at))

    def in_time_window(self, boots: int, engine_time: int) -> bool:
        """RFC 3414 3.2.7 (a non-authoritative engine): check an authenticated message's boots
        and time, and follow the engine's clock forward."""
        if boots == MAX_INT31 or boots < self.boots:
            return False
        if boots == self.boots and engine_time < self.now()[1] - TIME_WINDOW:
            return False
        if boots > self.boots or engine_time > self.latest_time:
            self.heard(boots, engine_time)
        return True

    def keys(self, user: UsmUser) -> Keys:
        """The user's keys localised to this engine's ID: computed once per (user, engine ID)
        (see `keys_soon` for the event loop)."""
        found = self._keys.get((user, self.engine_id))
        if found is None:
            found = self._remember(user, self.engine_id, Keys(user, self.engine_id))
        return found

    async def keys_soon(self, user: UsmUser) -> Keys:
        """`keys`, made in a thread the first time (not on the event loop: ~2-3 ms of hashing
        per key and device at the first poll of a thousand devices)."""
        found = self._keys.get((user, self.engine_id))
        if found is None:
            engine_id = self.engine_id
            made = await asyncio.to_thread(Keys, user, engine_id)
            return self._remember(user, engine_id, made) if engine_id == self.engine_id else made
        return found

    def _remember(self, user: UsmUser, engine_id: bytes, keys: Keys) -> Keys:
        """Keep keys for the next polls, of a few engine IDs at most: a device whose engine ID
        keeps changing (or a relay reporting a new unknown one at every request) would
        otherwise add some at every poll, for as long as the agent runs."""
        if len(self._keys) >= MAX_KEPT_KEYS and (user, engine_id) not in self._keys:
            self._keys.clear()
        return self._keys.setdefault((user, engine_id), keys)

    def next_salt(self) -> int:
        self._salt = (self._salt + 1) & 0xFFFFFFFFFFFFFFFF
        return self._salt


# -- encoding ----------------------------------------------------------------------------------


def encode_message(msg_id: int, flags: int, engine_id: bytes, boots: int, engine_time: int,
                   user_name: bytes, keys: Keys | None, scoped_pdu: bytes, salt: int = 0,
                   max_size: int = MAX_MESSAGE_SIZE) -> bytes:
    """An SNMPv3 message carrying `scoped_pdu` (a ScopedPDU: `encode_scoped_pdu`), encrypted
    and signed as `flags` asks (`keys` then must be the user's keys for `engine_id`)."""
    tlv, integer = ber._tlv, ber.encode_int
    priv_params = b""
    if flags & PRIV_FLAG:
        assert keys is not None
        encrypted, priv_params = keys.encrypt(scoped_pdu, boots, engine_time, salt)
        msg_data = tlv(0x04, encrypted)
    else:
        msg_data = scoped_pdu
    digest_length = keys.digest_length if keys is not None and flags & AUTH_FLAG else 0
    before_auth = tlv(0x04, engine_id) + integer(boots) + integer(engine_time) + tlv(0x04, user_name)
    usm_body = before_auth + bytes((0x04, digest_length)) + bytes(digest_length) + tlv(0x04, priv_params)
    usm = tlv(0x30, usm_body)
    security = tlv(0x04, usm)
    header = integer(3) + tlv(0x30, integer(msg_id) + integer(max_size)
                              + tlv(0x04, bytes((flags,))) + integer(USM))
    body = header + security + msg_data
    message = tlv(0x30, body)
    if digest_length:
        assert keys is not None
        at = ((len(message) - len(body)) + len(header) + (len(security) - len(usm))
              + (len(usm) - len(usm_body)) + len(before_auth) + 2)
        message = message[:at] + keys.sign(message) + message[at + digest_length:]
    return message


def encode_scoped_pdu(context_engine_id: bytes, context_name: bytes, pdu: bytes) -> bytes:
    return ber._tlv(0x30, ber._tlv(0x04, context_engine_id) + ber._tlv(0x04, context_name) + pdu)


# -- decoding ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """An SNMPv3 message's header and USM parameters, and where its other parts lie in `raw`."""

    raw: bytes
    msg_id: int
    flags: int
    engine_id: bytes
    boots: int
    engine_time: int
    user_name: bytes
    auth_at: tuple[int, int]  # msgAuthenticationParameters: raw[start:end]
    priv_params: bytes
    data_at: tuple[int, int, int, int]  # msgData: tag, start and end of content, start of TLV


def _field(data: bytes, pos: int, limit: int, tag: int, what: str) -> tuple[int, int]:
    """(start, end) of the content of the TLV at pos, which must have `tag` and end by `limit`."""
    found, start, end = ber._header(data, pos)
    if found != tag or end > limit:
        raise BerError(f"bad {what}")
    return start, end


def _number(data: bytes, pos: int, limit: int, what: str) -> tuple[int, int]:
    """(value, end) of a non-negative INTEGER at pos (the header's and USM's numbers)."""
    start, end = _field(data, pos, limit, 0x02, what)
    value = ber._int(data, start, end)
    if value < 0:
        raise BerError(f"negative {what}")
    return value, end


def decode_message(data: bytes) -> Message:
    """The header and USM parameters of an SNMPv3 message (nothing checked against a key yet)."""
    try:
        return _decode_message(data)
    except BerError:
        raise
    except (IndexError, ValueError) as exc:
        raise BerError(f"malformed message: {exc}") from None


def _decode_message(data: bytes) -> Message:
    tag, pos, end = ber._header(data, 0)
    if tag != 0x30:
        raise BerError("not an SNMP message")
    version, pos = _number(data, pos, end, "version")
    if version != 3:
        raise BerError(f"an SNMP version {'1' if version == 0 else '2c' if version == 1 else version} "
                       "message (v3 asked)")
    header_start, header_end = _field(data, pos, end, 0x30, "message header")
    msg_id, pos = _number(data, header_start, header_end, "msgID")
    _, pos = _number(data, pos, header_end, "msgMaxSize")
    start, pos = _field(data, pos, header_end, 0x04, "msgFlags")
    if pos - start != 1:
        raise BerError("msgFlags not one byte")
    flags = data[start]
    model, _ = _number(data, pos, header_end, "msgSecurityModel")
    if model != USM:
        raise BerError(f"security model {model}, not USM")
    params_start, params_end = _field(data, header_end, end, 0x04, "security parameters")
    usm_start, usm_end = _field(data, params_start, params_end, 0x30, "USM parameters")
    start, pos = _field(data, usm_start, usm_end, 0x04, "msgAuthoritativeEngineID")
    engine_id = data[start:pos]
    boots, pos = _number(data, pos, usm_end, "msgAuthoritativeEngineBoots")
    engine_time, pos = _number(data, pos, usm_end, "msgAuthoritativeEngineTime")
    start, pos = _field(data, pos, usm_end, 0x04, "msgUserName")
    user_name = data[start:pos]
    auth_at = _field(data, pos, usm_end, 0x04, "msgAuthenticationParameters")
    start, pos = _field(data, auth_at[1], usm_end, 0x04, "msgPrivacyParameters")
    priv_params = data[start:pos]
    if len(engine_id) > MAX_ENGINE_ID or len(user_name) > MAX_USER_NAME:
        raise BerError("engine ID or user name longer than 32 bytes")
    tag, start, pos = ber._header(data, params_end)
    if tag not in (0x30, 0x04) or pos > end:
        raise BerError("bad msgData")
    return Message(data, msg_id, flags, engine_id, boots, engine_time, user_name, auth_at,
                   priv_params, (tag, start, pos, params_end))


def verify(message: Message, keys: Keys) -> None:
    """Check an authenticated message's HMAC (RFC 3414 3.2.6); raises WrongDigest."""
    start, end = message.auth_at
    if end - start != keys.digest_length or not keys.digest_length:
        raise WrongDigest(f"an HMAC of {end - start} bytes ({keys.digest_length} expected)")
    raw = message.raw
    expected = keys.sign(raw[:start] + bytes(end - start) + raw[end:])
    if not hmac.compare_digest(expected, raw[start:end]):
        raise WrongDigest("the HMAC does not match")


def scoped_pdu(message: Message, keys: Keys | None) -> ber.Response:
    """The PDU of a message (decrypted with `keys` if it is encrypted; verify() it first)."""
    tag, start, end, _ = message.data_at
    if message.flags & PRIV_FLAG:
        if tag != 0x04 or not message.flags & AUTH_FLAG:
            raise BerError("encrypted data without an encrypted flag, or without authentication")
        if keys is None:
            raise CannotDecrypt("an encrypted reply to a request without privacy")
        plain = keys.decrypt(message.raw[start:end], message.boots, message.engine_time,
                             message.priv_params)
        try:
            return _scoped(plain, 0)
        except BerError as exc:
            raise CannotDecrypt(f"decrypted data is not a scoped PDU ({exc})") from None
    if tag != 0x30:
        raise BerError("encrypted data in a message not flagged encrypted")
    return _scoped(message.raw, message.data_at[3])


def _scoped(data: bytes, pos: int) -> ber.Response:
    try:
        tag, start, end = ber._header(data, pos)
        if tag != 0x30:
            raise BerError("not a scoped PDU")
        _, pos = _field(data, start, end, 0x04, "contextEngineID")
        _, pos = _field(data, pos, end, 0x04, "contextName")
    except BerError:
        raise
    except (IndexError, ValueError) as exc:
        raise BerError(f"malformed scoped PDU: {exc}") from None
    return ber.decode_pdu(data, pos, end)
