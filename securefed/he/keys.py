"""CKKS key material and the client/server contexts.

* ``ClientContext`` holds the federation's shared secret key (made once at provisioning with
  :func:`generate_client_context`, handed to members out of band with ``serialize_secret()``).
  Clients encrypt with the *secret* key (SEAL symmetric encryption): the second ciphertext
  polynomial is then a PRNG expansion of a 64-byte seed, so an upload is c0 and the seed, and a
  decryptor regenerates c1 of a sum from the contributors' seeds (he.vector). The same secret
  yields the members-only key of the linear tags (he.tags).
* ``ServerContext`` is built from ``ClientContext.public_bytes()``: encryption parameters only, no
  key of any kind. Loading refuses bytes that carry a secret key.
* Both sides pin a named parameter set and refuse a context that deviates from it.
* ``load_secret_context`` reads the secret context only from a file no group or other can reach.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tenseal.sealapi as sealapi

from securefed.crypto.prg import stream_at
from securefed.errors import CryptoError, InvalidInput, InvalidMessage, ProtocolAbort
from securefed.fsutil import read_secret
from securefed.he import _seal, tags
from securefed.he.params import DEFAULT_PARAMS_NAME, CkksParams, get_params
from securefed.he.vector import (
    EncryptedSum,
    EncryptedVector,
    check_length,
    pack_coeffs,
    seed_records,
    unpack_coeffs,
)

# A parameters-only context is ~100 bytes; a secret one ~60 KB (N=4096) to ~250 KB (N=8192).
# Context bytes come from provisioning (operator files), not from peers; the caps bound parsing.
MAX_PUBLIC_CONTEXT_BYTES = 128 * 1024
MAX_SECRET_CONTEXT_BYTES = 4 * 1024 * 1024
# Decoded padding slots of an honest sum are CKKS noise (~1e-8); far above means a foreign key.
_PADDING_TOLERANCE = 2.0**-10


def _resolve(params: CkksParams | str) -> CkksParams:
    if isinstance(params, CkksParams):
        return params
    if isinstance(params, str):
        return get_params(params)
    raise InvalidInput("params must be a CkksParams or the name of a parameter set")


_GAUSS_BLOCK = 1 << 20  # values per block: bounds the temporaries for LLM-sized vectors


def secure_gaussian(count: int, key: bytes | None = None) -> np.ndarray:
    """``count`` iid N(0, 1) samples (Box-Muller) from os.urandom, or from the AES-CTR keystream of
    ``key`` (32 bytes) when every holder of that key must draw the same samples.

    numpy only converts the CSPRNG bytes to floats here; it is not used as a random generator.
    """
    out = np.empty(count)
    stream = None if key is None else stream_at(key)
    for start in range(0, count, _GAUSS_BLOCK):
        m = min(_GAUSS_BLOCK, count - start)
        pairs = (m + 1) // 2
        raw_bytes = os.urandom(16 * pairs) if stream is None else stream.update(bytes(16 * pairs))
        raw = np.frombuffer(raw_bytes, dtype="<u8").astype(np.uint64).reshape(2, pairs)
        u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]: log is finite
        u2 = (raw[1] >> np.uint64(11)).astype(np.float64) * 2.0**-53
        r = np.sqrt(-2.0 * np.log(u1))
        theta = 2.0 * math.pi * u2
        out[start : start + m] = np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:m]
    return out


class ServerContext:
    """Encryption parameters without any key: enough to check and add ciphertexts, nothing more."""

    __slots__ = ("params", "_ctx", "seal_context", "primes")

    def __init__(self, ctx: Any, params: CkksParams) -> None:  # use from_public_bytes
        if ctx.has_secret_key() or not ctx.is_public():
            raise CryptoError(
                "CKKS context for the server holds a secret key; give the server only public_bytes()"
            )
        _seal.check_context_params(ctx, params)
        self.params = params
        self._ctx = ctx
        self.seal_context = ctx.seal_context().data
        self.primes = _seal.primes(params)

    @classmethod
    def from_public_bytes(cls, data: bytes, params: CkksParams | str) -> "ServerContext":
        params = _resolve(params)
        if isinstance(data, (bytes, bytearray)) and len(data) > MAX_PUBLIC_CONTEXT_BYTES:
            raise CryptoError(
                f"CKKS context for the server is {len(data)} bytes, too large to be parameters-only: it "
                "carries keys; give the server only ClientContext.public_bytes()"
            )
        ctx = _seal.load_context(data, MAX_PUBLIC_CONTEXT_BYTES)
        if ctx.has_secret_key() or not ctx.is_public():
            raise CryptoError(
                "CKKS context for the server holds a secret key; give the server only public_bytes()"
            )
        if ctx.has_relin_keys() or ctx.has_galois_keys():
            raise CryptoError(
                "CKKS context for the server carries relinearisation/Galois keys that additions never "
                "need; give the server only ClientContext.public_bytes()"
            )
        _seal.check_context_params(ctx, params)
        return cls(ctx, params)

    load = from_public_bytes


class ClientContext:
    """The federation's shared CKKS secret context, as each member holds it."""

    __slots__ = ("params", "primes", "_ctx", "_seal_ctx", "_encoder", "_encryptor", "_decryptor", "_evaluator",
                 "_layout", "_members_key", "_scratch")

    def __init__(self, ctx: Any, params: CkksParams) -> None:  # use generate/from_secret_bytes
        if not ctx.has_secret_key():
            raise CryptoError("CKKS client context has no secret key")
        _seal.check_context_params(ctx, params)
        self.params = params
        self.primes = _seal.primes(params)
        self._ctx = ctx
        self._seal_ctx = ctx.seal_context().data
        sk = ctx.secret_key().data
        self._encoder = sealapi.CKKSEncoder(self._seal_ctx)
        self._encryptor = sealapi.Encryptor(self._seal_ctx, sk)
        self._decryptor = sealapi.Decryptor(self._seal_ctx, sk)
        self._evaluator = sealapi.Evaluator(self._seal_ctx)
        self._layout = _seal.probe_layout(self._seal_ctx, self._encryptor, self._encoder, params)
        self._members_key: bytes | None = None
        self._scratch = _seal.Scratch()

    @classmethod
    def from_secret_bytes(cls, data: bytes, params: CkksParams | str) -> "ClientContext":
        params = _resolve(params)
        ctx = _seal.load_context(data, MAX_SECRET_CONTEXT_BYTES)
        if not ctx.has_secret_key():
            raise CryptoError("CKKS client context bytes carry no secret key")
        _seal.check_context_params(ctx, params)
        return cls(ctx, params)

    load = from_secret_bytes

    def serialize_secret(self) -> bytes:
        """Parameters and the secret key; share only among federation members, out of band."""
        return _seal.serialize_context(self._ctx, secret=True)

    def public_bytes(self) -> bytes:
        """Parameters only (no key of any kind): what the server gets."""
        return _seal.serialize_context(self._ctx, secret=False)

    def members_key(self) -> bytes:
        """The members-only key (he.tags): derived from the secret key, so the server cannot have it."""
        if self._members_key is None:
            self._members_key = tags.members_key(_seal.secret_key_coefficients(self._ctx))
        return self._members_key

    def attempt_keys(self, plan_sha256: bytes, attempt: int) -> tags.AttemptKeys:
        return tags.AttemptKeys.derive(self.members_key(), plan_sha256, attempt)

    # --- encryption ---------------------------------------------------------------------------

    def _check_input(self, vec: object) -> np.ndarray:
        try:
            x = np.asarray(vec)
        except Exception:
            raise InvalidInput("CKKS input must be a 1-D array of floats") from None
        if x.ndim != 1 or x.dtype.kind not in "fiu" or x.dtype == np.bool_:
            raise InvalidInput(f"CKKS input must be a 1-D real array, got shape {x.shape} dtype {x.dtype}")
        try:
            check_length(self.params, int(x.shape[0]))
        except InvalidMessage as exc:
            raise InvalidInput(str(exc)) from None
        x = x.astype(np.float64, copy=False)
        if not np.all(np.isfinite(x)):
            raise InvalidInput("CKKS input contains NaN or Inf; fix the update before encrypting")
        peak = float(np.max(np.abs(x)))
        if peak > self.params.max_abs_value:
            raise InvalidInput(
                f"CKKS input has |x| = {peak:g} > max_abs_value {self.params.max_abs_value:g} of "
                f"{self.params.name!r}; scale or clip the update first"
            )
        return x

    def encrypt(self, vec: object) -> EncryptedVector:
        """Encrypt a real vector: N reals per ciphertext (real and imaginary parts of N/2 slots),
        each a seeded secret-key ciphertext of which only c0 and c1's seed leave (he.vector)."""
        x = self._check_input(vec)
        p = self.params
        n, half = p.chunk_size, p.slot_count
        count = p.chunks_for(len(x))
        c0 = np.empty((count, len(self.primes) * p.poly_modulus_degree), dtype=np.uint64)
        seeds = []
        inflated_max = 2 * 8 * c0.shape[1] + 4096
        for i in range(count):
            block = np.zeros(n)
            part = x[i * n : (i + 1) * n]
            block[: part.size] = part
            z = block[:half] + 1j * block[half:]
            pt = sealapi.Plaintext()
            self._encoder.encode(z.tolist(), p.scale, pt)
            raw = _seal.inflate(_seal.save(self._encryptor.encrypt_symmetric(pt), self._scratch), inflated_max)
            c0[i], rec = self._layout.split_seeded(raw)
            seeds.append(rec)
        return EncryptedVector(p.name, len(x), pack_coeffs(c0, p.coeff_bytes), b"".join(seeds))

    def contribution_tag(self, vec: EncryptedVector, keys: tags.AttemptKeys) -> tuple[int, ...]:
        """This attempt's linear tag of a contribution (he.tags), per data prime."""
        return tags.linear_tag(vec.c0, self.params, self.primes, keys.vector)

    def sum_matches(self, total: EncryptedSum, contributor_tags: Sequence[Sequence[int]], keys: tags.AttemptKeys) -> bool:
        """Whether the sum's tag equals the sum of the contributors' tags (mod every data prime)."""
        got = tags.linear_tag(total.c0, self.params, self.primes, keys.vector)
        return got == tags.sum_tags(contributor_tags, self.primes)

    # --- decryption ---------------------------------------------------------------------------

    def decrypt(self, total: EncryptedSum, *, summands: int | None = None, noise_key: bytes | None = None) -> np.ndarray:
        """Decrypt a sum (c1 regenerated here from the contributors' seeds) of ``total.summands``
        vectors, or at most ``summands`` if given (default: params.max_summands as the range bound).

        Gaussian noise of std ``params.flood_sigma`` is added to every value before it is returned,
        so that what a member later publishes is a fresh RLWE sample rather than the exact
        c0 + c1·s, which would reveal the secret key (Li & Micciancio 2021). With ``noise_key`` every
        member draws the same noise, so the server cannot average several decryptions to thin it.
        Out-of-range values (a contribution under another key, corruption, overflow) abort.
        """
        values = self._decode_checked(total, summands)
        return values + self.params.flood_sigma * secure_gaussian(len(values), noise_key)

    def _decode_checked(self, total: EncryptedSum, summands: int | None) -> np.ndarray:
        """Exact CKKS decode with range checks, *without* flooding: never release this."""
        if not isinstance(total, EncryptedSum) or total.params_name != self.params.name:
            raise InvalidInput("decrypt needs an EncryptedSum under this parameter set")
        p = self.params
        length = total.length
        if summands is None:
            summands = total.summands
        if isinstance(summands, bool) or not isinstance(summands, int) or not 1 <= summands <= p.max_summands:
            raise InvalidInput(f"summands must be an integer in 1..{p.max_summands}")
        n, half, width = p.chunk_size, p.slot_count, p.coeff_bytes
        per = len(self.primes) * p.poly_modulus_degree * width
        count = p.chunks_for(length)
        seeds = [seed_records(s) for s in total.seeds]
        zeros = np.zeros(len(self.primes) * p.poly_modulus_degree, dtype=np.uint64)
        view = memoryview(total.c0)
        out = np.empty(count * n)
        for i in range(count):
            c0 = unpack_coeffs(view[i * per : (i + 1) * per], width, self.primes, p.poly_modulus_degree).reshape(-1)
            # c1 of the sum is the sum of every contributor's c1 = PRNG(seed): SEAL expands each seed.
            ct = _seal.load_blob(self._seal_ctx, self._layout.seeded_blob(c0, seeds[0][i]), self._scratch)
            for other in seeds[1:]:
                self._evaluator.add_inplace(ct, _seal.load_blob(self._seal_ctx, self._layout.seeded_blob(zeros, other[i]),
                                                                self._scratch))
            pt = sealapi.Plaintext()
            self._decryptor.decrypt(ct, pt)
            z = np.asarray(self._encoder.decode_complex(pt), dtype=np.complex128)
            out[i * n : i * n + half] = z.real
            out[i * n + half : (i + 1) * n] = z.imag
        bound = summands * p.max_abs_value * (1 + 1e-9) + 2.0**-20
        if not np.all(np.isfinite(out)) or float(np.max(np.abs(out[:length]))) > bound:
            raise ProtocolAbort(
                "decrypted CKKS aggregate is out of range: a contribution was encrypted under another "
                "key, corrupted, or too many were summed; no aggregate is released"
            )
        if length < len(out) and float(np.max(np.abs(out[length:]))) > _PADDING_TOLERANCE:
            raise ProtocolAbort(
                "decrypted CKKS aggregate has non-zero padding: a contribution was encrypted under "
                "another key or corrupted; no aggregate is released"
            )
        return out[:length]


def load_secret_context(path: str | Path, params: CkksParams | str) -> ClientContext:
    """The federation's secret context from a file only its owner can read (``ConfigError`` otherwise,
    as for identity keys): whoever reads it can decrypt every member's update."""
    return ClientContext.from_secret_bytes(read_secret(path, "CKKS secret context"), params)


def generate_client_context(params: CkksParams | str = DEFAULT_PARAMS_NAME) -> ClientContext:
    """Provisioning: a fresh secret key for the federation under a named parameter set."""
    params = _resolve(params)
    return ClientContext(_seal.new_context(params), params)
