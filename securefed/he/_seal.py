"""Raw TenSEAL/SEAL plumbing. Nothing outside securefed.he should import this module.

TenSEAL's SEAL bindings (``tenseal.sealapi``) only save and load through file paths, and the
high-level ``CKKSVector`` neither keeps the seed of a symmetric ciphertext nor encodes complex
slots. So ciphertexts go through an anonymous in-memory file (``memfd``; a private temporary
directory where memfd is unavailable). Ciphertexts are not secret, and no plaintext or key ever
goes through these files. SEAL saves with zstd; we inflate only blobs this process produced.
"""

from __future__ import annotations

import os
import struct
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
import zstandard

from securefed.errors import CryptoError, InvalidMessage
from securefed.he.params import CkksParams

_HAS_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


@contextmanager
def _scratch_path() -> Iterator[tuple[str, Callable[[], bytes], Callable[[bytes], None]]]:
    """A path SEAL's fstreams can open, with read-all and write-all helpers."""
    if _HAS_MEMFD:
        fd = os.memfd_create("securefed-ckks", os.MFD_CLOEXEC)
        path = f"/proc/self/fd/{fd}"

        def read() -> bytes:
            size = os.fstat(fd).st_size
            return os.pread(fd, size, 0) if size else b""

        def write(data: bytes) -> None:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            off = 0
            while off < len(view):
                off += os.pwrite(fd, view[off:], off)

        try:
            yield path, read, write
        finally:
            os.close(fd)
    else:  # pragma: no cover - non-Linux fallback
        with tempfile.TemporaryDirectory(prefix="securefed-ckks-") as d:
            path = os.path.join(d, "blob")

            def read() -> bytes:
                with open(path, "rb") as f:
                    return f.read()

            def write(data: bytes) -> None:
                with open(path, "wb") as f:
                    f.write(data)

            yield path, read, write


def save(obj: Any, scratch: "Scratch | None" = None) -> bytes:
    """Serialize a SEAL object (Ciphertext or SerializableCiphertext) with SEAL's default zstd."""
    if scratch is not None:
        obj.save(scratch.path)
        data = scratch.read()
    else:
        with _scratch_path() as (path, read, _write):
            obj.save(path)
            data = read()
    if not data:
        raise CryptoError("SEAL failed to serialize a ciphertext")
    return data


class Layout:
    """How this SEAL build serializes a fresh (first data level, NTT form, size 2, scale 2^scale_bits)
    ciphertext of one context: learned once from SEAL's own output (``probe_layout``), never assumed.

    SEAL 4 writes (after its 16-byte header): parms_id (32 B), is_ntt_form (1 B), size, N, k (u64 each),
    scale (f64), correction factor (u64); then the coefficient DynArray (its own 16-byte header, a u64
    count, the u64 coefficients); a seeded ciphertext keeps only c0 there and appends c1's PRNG record
    (a 16-byte header, the PRNG type byte, the 64-byte seed). We read c0 and that record from our own
    encryptions, and rebuild uncompressed blobs from them that SEAL's ``load`` validates in full.
    """

    __slots__ = ("header", "meta", "n", "k", "seed_header")

    def __init__(self, header: bytes, meta: bytes, n: int, k: int, seed_header: bytes) -> None:
        self.header, self.meta, self.n, self.k, self.seed_header = header, meta, n, k, seed_header

    def _blob(self, body: bytes) -> bytes:
        magic, hsize, major, minor, _compr, reserved, _size = _HEADER.unpack(self.header)
        return _HEADER.pack(magic, hsize, major, minor, COMPR_NONE, reserved, _HEADER.size + len(body)) + body

    def _array(self, coeffs: np.ndarray) -> bytes:
        data = np.ascontiguousarray(coeffs, dtype="<u8").tobytes()
        head = _HEADER.pack(SEAL_MAGIC, _HEADER.size, *_HEADER.unpack(self.header)[2:4], COMPR_NONE, 0,
                            _HEADER.size + 8 + len(data))
        return head + struct.pack("<Q", coeffs.size) + data

    def seeded_blob(self, c0: np.ndarray, seed_record: bytes) -> bytes:
        """A seeded ciphertext (c0, c1 = PRNG(seed)) for SEAL's ``load``, which expands c1 itself."""
        if c0.size != self.n * self.k or len(seed_record) != SEED_RECORD_BYTES:
            raise InvalidMessage("seeded ciphertext: wrong c0 size or seed record")
        rec = self.seed_header + seed_record
        return self._blob(self.meta + self._array(c0) + rec)

    def full_blob(self, c0: np.ndarray, c1: np.ndarray) -> bytes:
        if c0.size != self.n * self.k or c1.size != self.n * self.k:
            raise InvalidMessage("ciphertext: wrong polynomial sizes")
        return self._blob(self.meta + self._array(np.concatenate([c0.reshape(-1), c1.reshape(-1)])))

    def split_seeded(self, raw: bytes) -> tuple[np.ndarray, bytes]:
        """(c0 coefficients, seed record) of an inflated seeded serialization made by this SEAL."""
        m, nk = len(self.meta), self.n * self.k
        want = m + _HEADER.size + 8 + 8 * nk + len(self.seed_header) + SEED_RECORD_BYTES
        if len(raw) != want or raw[:m] != self.meta:
            raise CryptoError("SEAL's seeded ciphertext does not have the layout learned at start-up")
        (count,) = struct.unpack_from("<Q", raw, m + _HEADER.size)
        if count != nk:
            raise CryptoError("SEAL's seeded ciphertext holds an unexpected number of coefficients")
        off = m + _HEADER.size + 8
        c0 = np.frombuffer(raw, dtype="<u8", count=nk, offset=off).astype(np.uint64)
        rec = raw[off + 8 * nk:]
        if rec[: len(self.seed_header)] != self.seed_header:
            raise CryptoError("SEAL's seeded ciphertext has an unexpected PRNG record")
        return c0, bytes(rec[len(self.seed_header):])


_HEADER = struct.Struct("<HBBBBHQ")
SEAL_MAGIC = 0xA15E
COMPR_NONE = 0
_META_BYTES = 32 + 1 + 8 * 5
# The PRNG record after its header: the PRNG type (1 = Blake2xb, 2 = SHAKE-256) and the 64-byte seed.
SEED_RECORD_BYTES = 65
PRNG_TYPES = frozenset({1, 2})


def inflate(blob: bytes, max_bytes: int) -> bytes:
    """The body of a SEAL zstd blob this process just produced (trusted: never peer input)."""
    magic, hsize, _major, _minor, compr, _res, size = _HEADER.unpack_from(blob)
    if magic != SEAL_MAGIC or hsize != _HEADER.size or size != len(blob):
        raise CryptoError("SEAL produced a blob without a valid header")
    if compr == COMPR_NONE:
        return bytes(blob[_HEADER.size:])
    return zstandard.ZstdDecompressor().decompress(bytes(blob[_HEADER.size:]), max_output_size=max_bytes)


def probe_layout(seal_context: Any, encryptor: Any, encoder: Any, params: CkksParams) -> Layout:
    """Encrypt zeros once and learn this SEAL's serialization (see ``Layout``); refuse anything else."""
    pt = sealapi.Plaintext()
    encoder.encode([0j] * params.slot_count, params.scale, pt)
    blob = save(encryptor.encrypt_symmetric(pt))
    n, k = params.poly_modulus_degree, len(params.data_prime_bit_sizes)
    raw = inflate(blob, 2 * 8 * n * k + 4096)
    meta = raw[:_META_BYTES]
    ntt = meta[32]
    size, deg, primes = struct.unpack_from("<QQQ", meta, 33)
    (scale,) = struct.unpack_from("<d", meta, 57)
    if not (ntt == 1 and size == 2 and deg == n and primes == k and scale == params.scale):
        raise CryptoError("this SEAL build serializes ciphertexts in a layout securefed does not know")
    seed_at = _META_BYTES + _HEADER.size + 8 + 8 * n * k
    seed_header = raw[seed_at : seed_at + _HEADER.size]
    layout = Layout(bytes(blob[: _HEADER.size]), bytes(meta), n, k, bytes(seed_header))
    _c0, rec = layout.split_seeded(raw)
    if rec[0] not in PRNG_TYPES:
        raise CryptoError("this SEAL build seeds ciphertexts with an unknown PRNG")
    return layout


class Scratch:
    """One reusable in-memory file for SEAL loads (one memfd per owner, not per ciphertext: a decryptor
    loads one ciphertext per contributor and chunk). Not thread-safe: one per context."""

    def __init__(self) -> None:
        self._cm = _scratch_path()
        self.path, self.read, self.write = self._cm.__enter__()

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


def load_blob(seal_context: Any, blob: bytes, scratch: Scratch | None = None) -> Any:
    """SEAL's own ``load`` of an uncompressed blob built by ``Layout``: it checks the metadata against
    the context and that every coefficient is reduced; InvalidMessage otherwise."""
    ct = sealapi.Ciphertext()
    own = scratch is None
    scratch = scratch or Scratch()
    try:
        scratch.write(blob)
        try:
            ct.load(seal_context, scratch.path)
        except Exception:  # SEAL raises std exceptions mapped to ValueError/RuntimeError/...
            raise InvalidMessage("ciphertext does not load under this CKKS context") from None
    finally:
        if own:
            scratch.close()
    if ct.size() != 2 or not ct.is_ntt_form() or list(ct.parms_id()) != list(seal_context.first_parms_id()):
        raise InvalidMessage("ciphertext is not a fresh ciphertext for this CKKS parameter set")
    return ct


def primes(params: CkksParams) -> tuple[int, ...]:
    """The data primes q_l of a parameter set (SEAL's own choice for its bit sizes)."""
    return tuple(m.value() for m in sealapi.CoeffModulus.Create(params.poly_modulus_degree,
                                                                 list(params.coeff_mod_bit_sizes)))[:-1]


def secret_key_coefficients(ctx: ts.Context) -> bytes:
    """The secret key polynomial (NTT form, every prime) as little-endian u64s: key material."""
    data = ctx.secret_key().data.data()
    return np.array([data.data(i) for i in range(data.coeff_count())], dtype="<u8").tobytes()


def new_context(params: CkksParams) -> ts.Context:
    """A fresh CKKS context with a secret key, for symmetric (secret-key) encryption."""
    if not sealapi.Serialization.IsSupportedComprMode(sealapi.COMPR_MODE_TYPE.ZSTD):
        raise CryptoError("this TenSEAL build lacks zstd; securefed's CKKS wire format needs it")
    return ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        n_threads=1,
    )


def serialize_context(ctx: ts.Context, *, secret: bool) -> bytes:
    # Public key, relinearization and Galois keys are never needed for sums: never shipped.
    return ctx.serialize(
        save_public_key=False, save_secret_key=secret, save_galois_keys=False, save_relin_keys=False
    )


def load_context(data: bytes, max_bytes: int) -> ts.Context:
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidMessage("CKKS context must be bytes")
    if len(data) > max_bytes:
        raise InvalidMessage(f"CKKS context of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return ts.context_from(bytes(data), n_threads=1)
    except Exception:
        raise InvalidMessage("CKKS context bytes do not deserialize") from None


def check_context_params(ctx: ts.Context, params: CkksParams) -> None:
    """Refuse a context whose ring, primes or scheme differ from the pinned parameter set."""
    try:
        parms = ctx.seal_context().data.key_context_data().parms()
        scheme = parms.scheme()
        n = parms.poly_modulus_degree()
        primes = [m.value() for m in parms.coeff_modulus()]
    except Exception:
        raise InvalidMessage("CKKS context has no usable encryption parameters") from None
    expected = [
        m.value()
        for m in sealapi.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    ]
    if getattr(scheme, "name", None) != "CKKS" or n != params.poly_modulus_degree or primes != expected:
        raise CryptoError(
            f"CKKS context does not match the pinned parameter set {params.name!r} "
            f"(N={n}, {len(primes)} primes); re-provision the federation's keys"
        )
