"""The CKKS mode's messages, as member and coordinator both read them.

A CKKS attempt runs three stages of its own (``CkksStage``), carried by existing wire messages:

* ``CONTRIBUTE``: each member uploads ``[c0, seeds, sealed tag, signature]`` (header
  stage ``STAGE_CIPHERTEXT_UPLOAD``) while the plan stage is open: its packed c0 coefficients
  and c1 seeds (``securefed.he.vector``), its linear tag sealed for members only (``securefed.he.tags``)
  and its identity signature over all of it (``contribution_payload``), as one
  ``TRANSFER_KIND_CIPHERTEXTS`` transfer;
* ``CONFIRM``: the server offers every contributor the decryption request ``[manifest, c0 of the
  sum, each contributor's seeds]`` (``encode_request``) as an ``AGGREGATE_KIND_CKKS_CIPHERTEXT_SUM``
  download: one sum, not N contributions. A member that checks it (signatures, its own entry, and
  the sum's tag against the contributors' tags) signs ``confirmation_payload``
  (``SubmitResult.consistency_signature``, header stage ``STAGE_CONSISTENCY_CHECK``);
* ``DECRYPT``: the server hands back the confirmations (``Task.decrypt_request``); a member decrypts
  and returns the sum as little-endian float32 (``encode_decrypted``; a ``TRANSFER_KIND_RING_VECTOR``
  transfer with ``ring_bits`` 32, header stage ``STAGE_AGGREGATE``).

Everything a member signs here is domain-separated and binds the plan digest and the attempt.
"""

from __future__ import annotations

import enum
import hashlib
import json
from typing import NamedTuple

import numpy as np

from securefed.errors import InvalidMessage
from securefed.transport._generated import federation_pb2 as pb


class CkksStage(enum.Enum):
    CONTRIBUTE = "contribute"
    CONFIRM = "confirm"
    DECRYPT = "decrypt"

    @property
    def wire_stage(self) -> int:
        """The ``RequestHeader.stage`` a member's message of this stage carries."""
        return _WIRE_STAGE[self]


_WIRE_STAGE = {CkksStage.CONTRIBUTE: pb.STAGE_CIPHERTEXT_UPLOAD, CkksStage.CONFIRM: pb.STAGE_CONSISTENCY_CHECK,
               CkksStage.DECRYPT: pb.STAGE_AGGREGATE}

CONTRIBUTION_DOMAIN = b"securefed/ckks-contribution/v2\x00"
MANIFEST_FORMAT = "securefed-ckks-sum/v2"
CONFIRMATION_DOMAIN = b"securefed/ckks-confirm/v1\x00"
SIGNATURE_BYTES = 64
UPLOAD_PARTS = 4  # c0, seeds, sealed tag, signature
MAX_SEALED_TAG_BYTES = 256

# The decrypted sum travels back as float32: the precision of a plaintext update (the fixed-point
# payload of a plaintext round carries 2^-24), well below DP noise; 4 bytes a value.
DECRYPTED_BITS = 32


class Contribution(NamedTuple):
    """One member's signed contribution, as a decryption request lists it (its c0 is in the sum)."""

    client: str
    c0_sha256: bytes
    seeds: bytes
    sealed_tag: bytes
    signature: bytes


class Upload(NamedTuple):
    c0: bytes
    seeds: bytes
    sealed_tag: bytes
    signature: bytes


def digest_parts(parts: list[bytes]) -> bytes:
    """SHA-256 over length-prefixed parts (so no two splits of the same bytes collide)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.digest()


def contribution_payload(plan_sha256: bytes, attempt: int, client: str, c0_sha256: bytes, seeds_sha256: bytes,
                         sealed_tag: bytes) -> bytes:
    """What a member signs for its CKKS upload: this plan, attempt and member, this c0 (the server
    checks it on upload), these c1 seeds and this sealed tag (what a decryptor checks)."""
    name = client.encode("utf-8")
    return (CONTRIBUTION_DOMAIN + bytes(plan_sha256) + attempt.to_bytes(8, "big") + len(name).to_bytes(2, "big")
            + name + bytes(c0_sha256) + bytes(seeds_sha256) + len(sealed_tag).to_bytes(2, "big") + bytes(sealed_tag))


def signed_payload(plan_sha256: bytes, attempt: int, c: Contribution) -> bytes:
    return contribution_payload(plan_sha256, attempt, c.client, c.c0_sha256, hashlib.sha256(c.seeds).digest(),
                                c.sealed_tag)


def confirmation_payload(plan_sha256: bytes, attempt: int, request_digest: bytes) -> bytes:
    """What a member signs to confirm the one decryption request (contributor set) it accepted."""
    return CONFIRMATION_DOMAIN + bytes(plan_sha256) + attempt.to_bytes(8, "big") + bytes(request_digest)


def encode_upload(c0: bytes, seeds: bytes, sealed_tag: bytes, signature: bytes) -> list[bytes]:
    return [c0, seeds, sealed_tag, signature]


def split_upload(parts: list[bytes]) -> Upload:
    """A CKKS upload is its c0, its seeds, its sealed tag and the 64-byte contribution signature."""
    if len(parts) != UPLOAD_PARTS or len(parts[3]) != SIGNATURE_BYTES or not 0 < len(parts[2]) <= MAX_SEALED_TAG_BYTES:
        raise InvalidMessage("a CKKS upload is [c0, seeds, sealed tag, 64-byte signature]")
    return Upload(*(bytes(p) for p in parts))


def encode_request(items: list[Contribution], sum_c0: bytes) -> list[bytes]:
    """Parts of the decryption request: a JSON manifest, the sum's c0, then each contributor's seeds."""
    manifest = {"format": MANIFEST_FORMAT,
                "contributors": [{"client": c.client, "c0_sha256": c.c0_sha256.hex(), "sealed_tag": c.sealed_tag.hex(),
                                  "signature": c.signature.hex()} for c in items]}
    return [json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8"), sum_c0,
            *(c.seeds for c in items)]


def decode_request(parts: list[bytes]) -> tuple[list[Contribution], bytes]:
    """(contributions in order, the sum's packed c0); InvalidMessage if malformed."""
    try:
        manifest = json.loads(parts[0])
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError("format")
        # One encoding per manifest (the one encode_request writes): members confirm the request by its
        # digest, so the same contributors in other bytes (whitespace, key order) are not the same request.
        if json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8") != bytes(parts[0]):
            raise ValueError("not canonical")
        entries = manifest["contributors"]
        if not isinstance(entries, list) or len(parts) != 2 + len(entries):
            raise ValueError("part count")
        out = []
        for e, seeds in zip(entries, parts[2:]):
            sig, tag = bytes.fromhex(e["signature"]), bytes.fromhex(e["sealed_tag"])
            if len(sig) != SIGNATURE_BYTES or not 0 < len(tag) <= MAX_SEALED_TAG_BYTES:
                raise ValueError("sizes")
            out.append(Contribution(str(e["client"]), bytes.fromhex(e["c0_sha256"]), bytes(seeds), tag, sig))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError, OverflowError):
        raise InvalidMessage("malformed CKKS decryption request") from None
    return out, bytes(parts[1])


def encode_decrypted(values: np.ndarray) -> bytes:
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.max(np.abs(v), initial=0) >= 2.0**100:
        raise InvalidMessage("decrypted aggregate out of range")
    return v.astype("<f4").tobytes()


def decode_decrypted(data: bytes, length: int) -> np.ndarray:
    if len(data) != 4 * length:
        raise InvalidMessage(f"decrypted aggregate is {len(data)} bytes, expected {4 * length}")
    v = np.frombuffer(data, dtype="<f4").astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise InvalidMessage("decrypted aggregate holds NaN or Inf")
    return v
