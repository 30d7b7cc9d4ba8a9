"""A SHA-256 Merkle tree (RFC 6962 section 2.1 hashing): commit to a list with one 32-byte root and
prove one entry with log2(n) sibling hashes.

Leaves are hashed as SHA-256(0x00 || leaf) and inner nodes as SHA-256(0x01 || left || right), so no
leaf can pass as an inner node (second-preimage attacks on the tree). The split of a list of n
leaves is at the largest power of two below n, exactly as in RFC 6962, so the tree and its proofs
are defined for every n >= 1 without padding.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from securefed.crypto._checks import ensure, require_bytes, require_int
from securefed.errors import CryptoError

__all__ = ["HASH_SIZE", "MerkleTree", "leaf_hash", "root_from_proof", "verify_inclusion"]

HASH_SIZE = 32
MAX_PROOF_LENGTH = 64  # a proof of a list of 2^64 leaves; anything longer is malformed


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + require_bytes(leaf, "Merkle leaf", CryptoError)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """The tree over ``leaves`` (kept as leaf hashes); ``root`` and ``proof(index)``."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        ensure(len(leaves) >= 1, "a Merkle tree needs at least one leaf", CryptoError)
        self._hashes = [leaf_hash(x) for x in leaves]
        self._memo: dict[tuple[int, int], bytes] = {}
        self.root = self._hash(0, len(self._hashes))

    def __len__(self) -> int:
        return len(self._hashes)

    def _hash(self, lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return self._hashes[lo]
        got = self._memo.get((lo, hi))
        if got is None:
            k = _split(hi - lo)
            got = self._memo[(lo, hi)] = _node(self._hash(lo, lo + k), self._hash(lo + k, hi))
        return got

    def proof(self, index: int) -> tuple[bytes, ...]:
        """The audit path of leaf ``index``: sibling hashes from the leaf up to the root."""
        require_int(index, "leaf index", CryptoError, lo=0, hi=len(self._hashes) - 1)
        path: list[bytes] = []
        lo, hi = 0, len(self._hashes)
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._hash(lo, lo + k))
                lo = lo + k
        return tuple(reversed(path))


def root_from_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root that ``proof`` yields for ``leaf`` at ``index`` of ``size`` leaves; None if malformed."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return None
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        return None
    if not isinstance(proof, (tuple, list)) or len(proof) > MAX_PROOF_LENGTH:
        return None
    if any(not isinstance(p, bytes) or len(p) != HASH_SIZE for p in proof):
        return None
    # Walk down from the root to find, level by level, on which side the sibling sits.
    sides: list[bool] = []  # True: the sibling is on the right
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            sides.append(True)
            hi = lo + k
        else:
            sides.append(False)
            lo = lo + k
    if len(sides) != len(proof):
        return None
    h = leaf_hash(leaf)
    for sibling, right in zip(proof, reversed(sides)):
        h = _node(h, sibling) if right else _node(sibling, h)
    return h


def verify_inclusion(root: bytes, leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows ``leaf`` at ``index`` of a list of ``size`` leaves with this ``root``."""
    got = root_from_proof(leaf, index, size, proof)
    return got is not None and isinstance(root, bytes) and hmac.compare_digest(got, root)
