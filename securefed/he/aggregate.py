"""The server's side of CKKS aggregation: check every contribution, add ciphertexts, return the sum."""

from __future__ import annotations

from typing import Any, Sequence

import tenseal.sealapi as sealapi

from securefed.errors import InvalidMessage, ProtocolAbort
from securefed.he import _seal
from securefed.he.keys import ServerContext
from securefed.he.vector import EncryptedVector, check_chunks, check_length


class ServerAggregator:
    """Running encrypted sum of vectors of one fixed ``length``.

    A contribution is validated in full (sizes, zstd frame, SEAL deserialization under the
    public context, level, scale, size) before any of it touches the running sum, so a bad
    message is refused without corrupting the aggregate. The server never holds a key and cannot
    tell a ciphertext under a foreign key from a valid one; clients detect that on decryption.
    """

    def __init__(self, server_ctx: ServerContext, length: int) -> None:
        if not isinstance(server_ctx, ServerContext):
            raise TypeError("ServerAggregator needs a ServerContext")
        self._ctx = server_ctx
        self.params = server_ctx.params
        self.length = check_length(self.params, length)
        self._evaluator = sealapi.Evaluator(server_ctx.seal_context)
        self._sum: list[Any] | None = None
        self._senders: set[str] = set()
        self.count = 0

    def add(self, chunks: Sequence[bytes] | EncryptedVector, *, sender: str | None = None) -> None:
        """Add one client's encrypted vector. ``sender`` (if given) may contribute only once."""
        if isinstance(chunks, EncryptedVector):
            if chunks.params_name != self.params.name or chunks.length != self.length:
                raise InvalidMessage("encrypted vector is for another parameter set or length")
            chunks = chunks.chunks
        if sender is not None and sender in self._senders:
            raise InvalidMessage(f"a contribution from {sender!r} was already added")
        if self.count >= self.params.max_summands:
            raise ProtocolAbort(
                f"more than {self.params.max_summands} contributions would overflow the CKKS modulus "
                f"of {self.params.name!r}"
            )
        items = check_chunks(self.params, chunks, self.length)
        cts = [_seal.load_ciphertext(self._ctx.seal_context, blob, self.params) for blob in items]
        if self._sum is None:
            self._sum = cts
        else:
            for acc, ct in zip(self._sum, cts):
                self._evaluator.add_inplace(acc, ct)
        self.count += 1
        if sender is not None:
            self._senders.add(sender)

    def result_chunks(self) -> list[bytes]:
        """The encrypted sum as wire chunks (full ciphertexts: a sum has no seed)."""
        if self._sum is None:
            raise ProtocolAbort("no contributions were added; there is no aggregate to release")
        return [_seal.save(ct) for ct in self._sum]

    def result(self) -> EncryptedVector:
        return EncryptedVector(self.params.name, self.length, tuple(self.result_chunks()))
