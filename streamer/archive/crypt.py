"""Authenticated encryption of an innostream archive: the AES-256-GCM codec and the archive's key envelope.

:class:`AeadCodec` wraps the compression codec (compression happens before encryption) and seals every payload
under the archive's data key, binding it to its frame (type, flags, file, lengths, seq, offset) and to the archive
(its random id); :func:`new_codec` makes a fresh data key and archive id for a new archive, :func:`open_codec` finds
the key slot of the user's key in a stream header and unwraps the data key. The byte layouts are
:mod:`innostream.formats.archive_crypt` (docs/FORMAT.md §9).
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from innostream.archive.codec import Codec, FrameContext, zstd_decode
from innostream.formats import archive as fa
from innostream.formats import archive_crypt as fc
from innostream.formats.errors import Corrupt

if TYPE_CHECKING:
    from innostream.archive.frames import Frame

_HINT_KEY = "give the key the archive was written with (--decrypt-key-file or --decrypt-key-command)"


class KeyRequired(fc.AuthenticationFailed):
    """The archive is encrypted and no key was given."""


class WrongKey(fc.AuthenticationFailed):
    """The given key is not one the archive was encrypted for."""


class AeadCodec:
    """AES-256-GCM over the payloads of ``inner`` (zstd or plain), one archive's data key and id."""

    def __init__(self, inner: Codec, data_key: bytes, archive_id: bytes) -> None:
        if len(data_key) != fc.KEY_SIZE or len(archive_id) != fc.ARCHIVE_ID_SIZE:
            raise ValueError("a 32-byte data key and a 16-byte archive id")
        self.inner = inner
        self.features = inner.features | fc.FEATURE_AEAD
        self.archive_id = archive_id
        self._key = data_key
        self._aead = AESGCM(data_key)
        self._tls = threading.local()  # per thread: the plaintext buffer of compressed frames, a zstd context
        self.slots: list[bytes] = [fc.EMPTY_SLOT] * fc.KEY_SLOTS  # what the writer's stream header carries

    def stream_header(self, meta: dict[str, Any] | None) -> bytes:
        """The encrypted stream header: params, the key slots, the metadata sealed."""
        return fa.build_encrypted_stream_header(meta, self.features, self._key, self.archive_id, self.slots)

    def encode(self, raw: bytes | memoryview, ctx: FrameContext) -> tuple[bytes, int]:
        """Compress (the inner codec), then encrypt; the frame header fields are the associated data."""
        payload, flags = self.inner.encode(raw, ctx)
        flags |= fc.FLAG_AEAD
        aad = fc.frame_aad(self.archive_id, ctx.type, flags, ctx.file_id, len(payload) + fc.TAG_SIZE, len(raw),
                           ctx.seq, ctx.offset)
        return self._aead.encrypt(fc.frame_nonce(ctx.seq), payload, aad), flags

    def open(self, frame: Frame, into: memoryview | None = None) -> bytes | memoryview:
        """The stored (possibly compressed) payload of a frame, authenticated (decrypted ``into`` a buffer of
        ``stored_len - 16`` bytes if given).

        Raises:
            AuthenticationFailed: the frame was altered, or is not this archive's frame at this place (spliced from
                another archive, dropped, reordered).
        """
        h = frame.header
        if not h.flags & fc.FLAG_AEAD or len(frame.payload) < fc.TAG_SIZE:
            raise fc.AuthenticationFailed("unencrypted frame in an encrypted archive", where=frame.where)
        aad = fc.frame_aad(self.archive_id, h.type, h.flags, h.file_id, h.stored_len, h.raw_len, h.seq, h.offset)
        try:
            if into is None:
                return self._aead.decrypt(fc.frame_nonce(h.seq), frame.payload, aad)
            self._aead.decrypt_into(fc.frame_nonce(h.seq), frame.payload, aad, into)
            return into
        except InvalidTag:
            raise fc.AuthenticationFailed(
                f"frame {h.seq} does not authenticate: altered, or not this archive's frame at this place",
                where=frame.where) from None

    def decode(self, frame: Frame) -> bytes:
        """Authenticate and decrypt, then decompress (checking ``raw_len``). A compressed payload is decrypted into
        this thread's reusable buffer (no allocation per frame), then decompressed from it."""
        h = frame.header
        if not h.flags & fa.FLAG_ZSTD:
            plain = bytes(self.open(frame))
            if len(plain) != h.raw_len:
                raise Corrupt(f"frame holds {len(plain)} bytes, its header says {h.raw_len}", where=frame.where)
            return plain
        size = len(frame.payload) - fc.TAG_SIZE
        buf = getattr(self._tls, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._tls.buf = bytearray(max(size, fa.CHUNK_SIZE))
        with memoryview(buf) as whole, whole[:size] as view:
            return zstd_decode(self._tls, self.open(frame, view), h.raw_len, frame.where)


def new_codec(inner: Codec, user_key: bytes) -> AeadCodec:
    """A codec for a new archive: a random data key and archive id, the data key wrapped in slot 0."""
    codec = AeadCodec(inner, os.urandom(fc.KEY_SIZE), os.urandom(fc.ARCHIVE_ID_SIZE))
    codec.slots[0] = fc.build_slot(user_key, codec._key, codec.archive_id, os.urandom(fc.NONCE_SIZE))
    return codec


def find_slot(header: fa.StreamHeader, user_key: bytes) -> tuple[int, bytes]:
    """The slot index of ``user_key`` in an encrypted stream header and the unwrapped data key.

    Raises:
        WrongKey: no slot is for this key (one line naming the key ids: which key is needed).
        AuthenticationFailed: the slot for this key was altered.
    """
    area = header.crypt
    params = fc.parse_params(area)
    kid = fc.key_id(user_key)
    found = fc.slots(area)
    for i, slot in enumerate(found):
        if slot is not None and slot.key_id == kid:
            return i, fc.unwrap(slot, user_key, params.archive_id)
    wanted = " or ".join(s.key_id.hex() for s in found if s is not None) or "none (no key slot)"
    raise WrongKey(f"wrong key: the archive was encrypted for key id {wanted}, this key's id is {kid.hex()}",
                   offset=fa.STREAM_HEADER_SIZE + fc.SLOTS_OFFSET, hint=_HINT_KEY)


def open_codec(header: fa.StreamHeader, fixed: bytes, inner: Codec,
               user_key: bytes) -> tuple[AeadCodec, dict[str, Any]]:
    """The codec and the decrypted metadata of an encrypted stream (``fixed``: its first 32 bytes)."""
    _, data_key = find_slot(header, user_key)
    params = fc.parse_params(header.crypt)
    codec = AeadCodec(inner, data_key, params.archive_id)
    sealed = header.crypt[fc.CRYPT_HEADER_SIZE:]
    blob = fc.open_meta(data_key, fixed[:24], header.crypt[: fc.CRYPT_PARAMS_SIZE], sealed)
    try:
        meta = json.loads(blob.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise Corrupt(f"stream metadata is not JSON: {exc}", offset=fa.STREAM_HEADER_SIZE) from None
    if not isinstance(meta, dict):
        raise Corrupt("stream metadata is not a JSON object", offset=fa.STREAM_HEADER_SIZE)
    return codec, meta


def key_required(header: fa.StreamHeader) -> KeyRequired:
    """The error for an encrypted archive read without a key (naming the key ids it needs)."""
    ids = [s.key_id.hex() for s in fc.slots(header.crypt) if s is not None]
    return KeyRequired(f"the archive is encrypted (key id {' or '.join(ids) or 'none'}) and no key was given",
                       offset=0, hint=_HINT_KEY)


def rekey_header(header: fa.StreamHeader, fixed: bytes, old_key: bytes, new_key: bytes) -> tuple[int, bytes, int]:
    """Rewrap an encrypted stream's data key under ``new_key``: (the slot to write, its new bytes, the old key's
    slot to clear afterwards). The data key is proven first: the sealed metadata must open with it.

    Raises:
        FormatError: the archive is not encrypted; WrongKey, AuthenticationFailed: ``old_key`` does not open it.
    """
    if not header.required_features & fa.FEATURE_AEAD:
        raise Corrupt("the archive is not encrypted: there is no data key to rewrap", offset=12,
                      hint="rekey works on archives written with --encrypt-key-file or --encrypt-key-command")
    old_slot, data_key = find_slot(header, old_key)
    params = fc.parse_params(header.crypt)
    fc.open_meta(data_key, fixed[:24], header.crypt[: fc.CRYPT_PARAMS_SIZE], header.crypt[fc.CRYPT_HEADER_SIZE:])
    slot = fc.build_slot(new_key, data_key, params.archive_id, os.urandom(fc.NONCE_SIZE))
    return 1 - old_slot, slot, old_slot


def slot_offset(index: int) -> int:
    """Where key slot ``index`` is in the archive."""
    return fa.STREAM_HEADER_SIZE + fc.SLOTS_OFFSET + index * fc.KEY_SLOT_SIZE

