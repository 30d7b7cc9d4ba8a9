"""Small input guards shared by the primitives (pynacl-style ``ensure``)."""

from __future__ import annotations

from securefed.errors import SecureFedError

MAX_PARTY_ID = 2**64 - 1


def ensure(cond: bool, message: str, error: type[SecureFedError]) -> None:
    """Raise ``error(message)`` unless ``cond`` holds."""
    if not cond:
        raise error(message)


def require_bytes(value: object, name: str, error: type[SecureFedError], *, size: int | None = None) -> bytes:
    """Return ``value`` as ``bytes`` if it is bytes-like (and ``size`` long when given)."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise error(f"{name} must be bytes, got {type(value).__name__}")
    data = bytes(value)
    if size is not None and len(data) != size:
        raise error(f"{name} must be exactly {size} bytes, got {len(data)}")
    return data


def require_int(value: object, name: str, error: type[SecureFedError], *, lo: int, hi: int | None = None) -> int:
    """Return ``value`` if it is an int (not bool) in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise error(f"{name} must be in {bound}, got {value}")
    return value


def party_id_bytes(value: object, name: str, error: type[SecureFedError]) -> bytes:
    """8-byte big-endian encoding of a party id (0 .. 2^64-1)."""
    return require_int(value, name, error, lo=0, hi=MAX_PARTY_ID).to_bytes(8, "big")
