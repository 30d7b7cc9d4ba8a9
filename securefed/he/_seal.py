"""Raw TenSEAL/SEAL plumbing. Nothing outside securefed.he should import this module.

TenSEAL's SEAL bindings (``tenseal.sealapi``) only save and load through file paths, and the
high-level ``CKKSVector`` neither keeps the seed of a symmetric ciphertext nor encodes complex
slots. So ciphertexts go through an anonymous in-memory file (``memfd``; a private temporary
directory where memfd is unavailable). Ciphertexts are not secret, and no plaintext or key ever
goes through these files.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import tenseal as ts
import tenseal.sealapi as sealapi

from securefed.errors import CryptoError, InvalidMessage
from securefed.he import wire
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


def save(obj: Any) -> bytes:
    """Serialize a SEAL object (Ciphertext or SerializableCiphertext) with SEAL's default zstd."""
    with _scratch_path() as (path, read, _write):
        obj.save(path)
        data = read()
    if not data:
        raise CryptoError("SEAL failed to serialize a ciphertext")
    return data


def load_ciphertext(seal_context: Any, data: bytes, params: CkksParams) -> Any:
    """Check, deserialize and validate one fresh-level, size-2 ciphertext; InvalidMessage otherwise."""
    n = params.poly_modulus_degree
    k = len(params.data_prime_bit_sizes)
    if len(data) > wire.max_blob_bytes(n, k):
        raise InvalidMessage(f"ciphertext chunk of {len(data)} bytes is larger than any valid ciphertext")
    wire.check_seal_zstd_blob(data, wire.max_inflated_bytes(n, k))
    ct = sealapi.Ciphertext()
    with _scratch_path() as (path, _read, write):
        write(data)
        try:
            # SEAL checks metadata, buffer size and that every coefficient is reduced (is_valid_for).
            ct.load(seal_context, path)
        except Exception:  # SEAL raises std exceptions mapped to ValueError/RuntimeError/...
            raise InvalidMessage("ciphertext chunk does not deserialize under this CKKS context") from None
    if (
        ct.size() != 2
        or ct.poly_modulus_degree() != n
        or ct.coeff_modulus_size() != k
        or not ct.is_ntt_form()
        or list(ct.parms_id()) != list(seal_context.first_parms_id())
    ):
        raise InvalidMessage("ciphertext chunk is not a fresh ciphertext for this CKKS parameter set")
    if ct.scale != params.scale:
        raise InvalidMessage("ciphertext chunk has the wrong CKKS scale")
    return ct


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
