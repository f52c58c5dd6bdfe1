"""The encryption envelope of an innostream archive: crypt header, key slots, nonces and associated data.

Our own format (no upstream source); the byte tables are in ``docs/FORMAT.md`` §9. AES-256-GCM throughout: a fresh
random data key per archive encrypts every frame payload (after compression) and the stream metadata; the data key
is stored wrapped (AES-256-GCM) under a key derived from the user's key, in one of two fixed-size key slots, so that
``rekey`` rewrites one slot and nothing else. Every structure is a construct ``Struct`` (the readable spec) plus a
``struct.Struct`` fast path. Pure functions over bytes: no I/O here.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash
from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from innostream.formats.errors import ChecksumMismatch, Corrupt, FormatError, UnsupportedVersion

FEATURE_AEAD = 0x2  # required stream feature: every payload and the metadata are AES-256-GCM sealed
FLAG_AEAD = 0x2  # frame flag: the payload is ciphertext followed by a 16-byte GCM tag

KEY_SIZE = 32  # user keys and data keys: AES-256
TAG_SIZE = 16
NONCE_SIZE = 12
ARCHIVE_ID_SIZE = 16
KEY_ID_SIZE = 16
CIPHER_AES256GCM = 1
WRAP_HKDF_AES256GCM = 1

#: nonce domains (bytes 8..11 of the nonce): frames use their seq, the metadata its own domain
DOMAIN_FRAME = 0
DOMAIN_META = 1

#: HKDF-Expand (SHA-256) labels: the user key is never used directly, and never for two purposes
LABEL_KEK = b"innostream v1 key wrap"
LABEL_KEY_ID = b"innostream v1 key id"
WRAP_AAD = b"innostream v1 data key"

CRYPT_PARAMS = Struct(
    "cipher" / Int16ul,
    "wrap" / Int16ul,
    "reserved" / Int32ul,
    "archive_id" / Bytes(ARCHIVE_ID_SIZE),
)
CRYPT_PARAMS_SIZE = CRYPT_PARAMS.sizeof()
assert CRYPT_PARAMS_SIZE == 24
_CRYPT_PARAMS = struct.Struct(f"<HHI{ARCHIVE_ID_SIZE}s")
assert _CRYPT_PARAMS.size == CRYPT_PARAMS_SIZE

KEY_SLOT = Struct(
    "key_id" / Bytes(KEY_ID_SIZE),
    "wrap_nonce" / Bytes(NONCE_SIZE),
    "reserved" / Int32ul,
    "wrapped_key" / Bytes(KEY_SIZE + TAG_SIZE),
    "slot_xxh3" / Int64ul,
)
KEY_SLOT_SIZE = KEY_SLOT.sizeof()
assert KEY_SLOT_SIZE == 88
_KEY_SLOT = struct.Struct(f"<{KEY_ID_SIZE}s{NONCE_SIZE}sI{KEY_SIZE + TAG_SIZE}sQ")
assert _KEY_SLOT.size == KEY_SLOT_SIZE
SLOT_XXH3_OFFSET = KEY_SLOT_SIZE - 8
KEY_SLOTS = 2

#: the fixed part of an encrypted stream's metadata area: params, then the key slots; the sealed JSON follows
CRYPT_HEADER_SIZE = CRYPT_PARAMS_SIZE + KEY_SLOTS * KEY_SLOT_SIZE
assert CRYPT_HEADER_SIZE == 200
#: where the key slots are, counted from the start of the metadata area (stream offset 32 + this)
SLOTS_OFFSET = CRYPT_PARAMS_SIZE
EMPTY_SLOT = bytes(KEY_SLOT_SIZE)

#: the frame header fields an AEAD binds (bytes 0..39 of the frame header: all but the two checksums)
_FRAME_AAD = struct.Struct("<4sBBHIIIIQQ")
assert _FRAME_AAD.size == 40
_NONCE = struct.Struct("<QI")
assert _NONCE.size == NONCE_SIZE


class AuthenticationFailed(FormatError):
    """An authentication tag does not verify: a wrong key, or bytes changed since the archive was written."""


class CryptParams(NamedTuple):
    cipher: int
    wrap: int
    archive_id: bytes


class KeySlot(NamedTuple):
    key_id: bytes
    wrap_nonce: bytes
    wrapped_key: bytes


def _expand(user_key: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-SHA256 of the (uniformly random) user key: one subkey per purpose."""
    if len(user_key) != KEY_SIZE:
        raise ValueError(f"key of {len(user_key)} bytes, expected {KEY_SIZE}")
    return HKDFExpand(hashes.SHA256(), length, label).derive(user_key)


def key_id(user_key: bytes) -> bytes:
    """The public name of a user key (16 bytes): says which key an archive needs without revealing it."""
    return _expand(user_key, LABEL_KEY_ID, KEY_ID_SIZE)


def frame_nonce(seq: int, domain: int = DOMAIN_FRAME) -> bytes:
    """The 96-bit GCM nonce of frame ``seq``: unique per data key because seq never repeats in an archive."""
    return _NONCE.pack(seq, domain)


def frame_aad(archive_id: bytes, ftype: int, flags: int, file_id: int, stored_len: int, raw_len: int, seq: int,
              offset: int) -> bytes:
    """Associated data of a frame: the archive id and every frame header field but the checksums."""
    return archive_id + _FRAME_AAD.pack(b"ISFR", ftype, flags, 0, file_id, stored_len, raw_len, 0, seq, offset)


def build_params(archive_id: bytes) -> bytes:
    """The 24 bytes that say how the archive is encrypted and which archive it is."""
    if len(archive_id) != ARCHIVE_ID_SIZE:
        raise ValueError("archive id must be 16 bytes")
    return _CRYPT_PARAMS.pack(CIPHER_AES256GCM, WRAP_HKDF_AES256GCM, 0, archive_id)


def parse_params(buf: bytes) -> CryptParams:
    """The crypt parameters at the start of the metadata area of an encrypted stream."""
    if len(buf) < CRYPT_HEADER_SIZE + TAG_SIZE:
        raise Corrupt(f"encrypted stream header of {len(buf)} bytes, at least {CRYPT_HEADER_SIZE + TAG_SIZE}",
                      offset=32)
    cipher, wrap, reserved, archive_id = _CRYPT_PARAMS.unpack_from(buf)
    if cipher != CIPHER_AES256GCM or wrap != WRAP_HKDF_AES256GCM or reserved:
        raise UnsupportedVersion(f"archive cipher {cipher} / key wrap {wrap} not supported", offset=32)
    return CryptParams(cipher, wrap, archive_id)


def _wrap_aad(archive_id: bytes, kid: bytes) -> bytes:
    return WRAP_AAD + archive_id + kid


def build_slot(user_key: bytes, data_key: bytes, archive_id: bytes, wrap_nonce: bytes) -> bytes:
    """A key slot holding ``data_key`` wrapped under ``user_key`` (``wrap_nonce``: 12 random bytes)."""
    if len(data_key) != KEY_SIZE or len(wrap_nonce) != NONCE_SIZE:
        raise ValueError("data key must be 32 bytes and the wrap nonce 12")
    kid = key_id(user_key)
    kek = AESGCM(_expand(user_key, LABEL_KEK, KEY_SIZE))
    wrapped = kek.encrypt(wrap_nonce, data_key, _wrap_aad(archive_id, kid))
    head = _KEY_SLOT.pack(kid, wrap_nonce, 0, wrapped, 0)[:SLOT_XXH3_OFFSET]
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))


def parse_slot(buf: bytes, index: int) -> KeySlot | None:
    """A key slot, None if empty (all zero); its own checksum verified (it is the one part ``rekey`` rewrites)."""
    if buf == EMPTY_SLOT:
        return None
    kid, nonce, reserved, wrapped, digest = _KEY_SLOT.unpack(buf)
    if xxhash.xxh3_64_intdigest(buf[:SLOT_XXH3_OFFSET]) != digest:
        raise ChecksumMismatch(f"key slot {index} checksum mismatch", offset=32 + SLOTS_OFFSET + index * KEY_SLOT_SIZE)
    if reserved:
        raise Corrupt(f"key slot {index} reserved field is not zero", offset=32 + SLOTS_OFFSET + index * KEY_SLOT_SIZE)
    return KeySlot(kid, nonce, wrapped)


def slots(meta_area: bytes) -> list[KeySlot | None]:
    """Both key slots of an encrypted stream's metadata area."""
    return [parse_slot(meta_area[SLOTS_OFFSET + i * KEY_SLOT_SIZE: SLOTS_OFFSET + (i + 1) * KEY_SLOT_SIZE], i)
            for i in range(KEY_SLOTS)]


def unwrap(slot: KeySlot, user_key: bytes, archive_id: bytes) -> bytes:
    """The data key from a slot whose key id is the user key's.

    Raises:
        AuthenticationFailed: the slot was altered (its key id matched, its tag does not verify).
    """
    kek = AESGCM(_expand(user_key, LABEL_KEK, KEY_SIZE))
    try:
        return kek.decrypt(slot.wrap_nonce, slot.wrapped_key, _wrap_aad(archive_id, slot.key_id))
    except InvalidTag:
        raise AuthenticationFailed("the archive's wrapped data key does not authenticate: the key slot was altered",
                                   offset=32 + SLOTS_OFFSET) from None


def without_slots(meta_area: bytes) -> bytes:
    """The metadata area with both key slots as zeros: what every checksum and digest covers, so that rewriting a
    slot (``rekey``) changes no other byte of the archive."""
    end = SLOTS_OFFSET + KEY_SLOTS * KEY_SLOT_SIZE
    return meta_area[:SLOTS_OFFSET] + bytes(KEY_SLOTS * KEY_SLOT_SIZE) + meta_area[end:]


def meta_aad(fixed24: bytes, params: bytes) -> bytes:
    """Associated data of the sealed metadata: the stream header's first 24 bytes and the crypt parameters."""
    return fixed24 + params


def seal_meta(data_key: bytes, fixed24: bytes, params: bytes, blob: bytes) -> bytes:
    """The metadata JSON encrypted under the data key (nonce: seq 0 of the metadata domain)."""
    return AESGCM(data_key).encrypt(frame_nonce(0, DOMAIN_META), blob, meta_aad(fixed24, params))


def open_meta(data_key: bytes, fixed24: bytes, params: bytes, sealed: bytes) -> bytes:
    """The metadata JSON of an encrypted stream.

    Raises:
        AuthenticationFailed: the stream header was altered.
    """
    try:
        return AESGCM(data_key).decrypt(frame_nonce(0, DOMAIN_META), sealed, meta_aad(fixed24, params))
    except InvalidTag:
        raise AuthenticationFailed("the stream header does not authenticate: it was altered", offset=0) from None
