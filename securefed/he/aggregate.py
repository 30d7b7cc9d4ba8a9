"""The server's side of CKKS aggregation: check every contribution, add the c0s modulo q, return the sum.

The server holds no key and needs no SEAL: adding ciphertexts is adding their c0 coefficients modulo
each data prime (c1 is a PRNG expansion of seeds the decryptors regenerate themselves). Memory is
one running sum (8 bytes a parameter) plus the contribution being added, whatever the number of
contributors: nothing holds all N uploads.
"""

from __future__ import annotations

import numpy as np

from securefed.errors import InvalidMessage, ProtocolAbort
from securefed.he.keys import ServerContext
from securefed.he.vector import EncryptedSum, EncryptedVector, check_length, pack_coeffs, unpack_coeffs

# Ciphertexts unpacked and added at a time: bounds the temporary copy (8 MiB at N = 4096, k = 1).
_BATCH = 256


class ServerAggregator:
    """Running encrypted sum of vectors of one fixed ``length``.

    A contribution is validated in full (sizes, every coefficient reduced modulo its prime, seed
    records well formed) before any of it touches the running sum, so a bad message is refused
    without corrupting the aggregate. The server cannot tell a ciphertext under a foreign key from a
    valid one; members detect that on decryption, and a forged sum by the linear tags (protocols/ckks.md).
    """

    def __init__(self, server_ctx: ServerContext, length: int) -> None:
        if not isinstance(server_ctx, ServerContext):
            raise TypeError("ServerAggregator needs a ServerContext")
        self.params = server_ctx.params
        self.primes = server_ctx.primes
        self.length = check_length(self.params, length)
        p = self.params
        self._shape = (p.chunks_for(length), len(self.primes), p.poly_modulus_degree)
        self._q = np.asarray(self.primes, dtype=np.uint64).reshape(1, -1, 1)
        self._sum: np.ndarray | None = None
        self._seeds: dict[str, bytes] = {}
        self.count = 0

    def add(self, vec: EncryptedVector, *, sender: str) -> None:
        """Add one member's encrypted vector; ``sender`` may contribute only once."""
        if not isinstance(vec, EncryptedVector):
            raise InvalidMessage("a CKKS contribution must be an EncryptedVector")
        if vec.params_name != self.params.name or vec.length != self.length:
            raise InvalidMessage("encrypted vector is for another parameter set or length")
        if sender in self._seeds:
            raise InvalidMessage(f"a contribution from {sender!r} was already added")
        if self.count >= self.params.max_summands:
            raise ProtocolAbort(
                f"more than {self.params.max_summands} contributions would overflow the CKKS modulus "
                f"of {self.params.name!r}"
            )
        width, n = self.params.coeff_bytes, self.params.poly_modulus_degree
        per = len(self.primes) * n * width
        view = memoryview(vec.c0)
        if self._sum is None:
            self._sum = np.zeros(self._shape, dtype=np.uint64)
        done = 0
        try:
            for start in range(0, self._shape[0], _BATCH):
                batch = unpack_coeffs(view[start * per : (start + _BATCH) * per], width, self.primes, n)
                part = self._sum[start : start + _BATCH]
                np.add(part, batch, out=part)
                np.subtract(part, self._q, out=part, where=part >= self._q)  # both < q < 2^60: no wrap
                done = start + _BATCH
        except InvalidMessage:
            # Take back what was added (those batches were valid): the running sum is as it was.
            for start in range(0, done, _BATCH):
                batch = unpack_coeffs(view[start * per : (start + _BATCH) * per], width, self.primes, n)
                part = self._sum[start : start + _BATCH]
                ge = part >= batch
                np.subtract(part, batch, out=part, where=ge)
                np.add(part, self._q - batch, out=part, where=~ge)  # (part - batch) mod q
            raise
        self._seeds[sender] = vec.seeds
        self.count += 1

    def close(self) -> None:
        """Drop the running sum (after ``result``): the request holds the packed copy."""
        self._sum = None

    @property
    def senders(self) -> list[str]:
        return list(self._seeds)

    def result(self, senders: list[str] | None = None) -> EncryptedSum:
        """The encrypted sum, with the seed records of ``senders`` (default: in the order added),
        which must be exactly the contributors."""
        if self._sum is None:
            raise ProtocolAbort("no contributions were added; there is no aggregate to release")
        order = self.senders if senders is None else list(senders)
        if sorted(order) != sorted(self._seeds):
            raise ProtocolAbort("the sum's contributor list differs from the contributions added")
        return EncryptedSum(self.params.name, self.length, pack_coeffs(self._sum, self.params.coeff_bytes),
                            tuple(self._seeds[s] for s in order))
