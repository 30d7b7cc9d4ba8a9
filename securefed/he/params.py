"""Named CKKS parameter sets, refused unless they meet 128-bit classical security.

Pure module: importing it does not import TenSEAL.

Why these numbers (see protocols/ckks.md for the full argument):

* Aggregation needs only ciphertext additions, so the modulus chain is one data prime plus the
  special prime TenSEAL insists on (it is only used for key switching, which we never do, and it
  never appears in a ciphertext). Ciphertext size is proportional to the *data* prime's bit size.
* Each real parameter rides in half a complex CKKS slot (real and imaginary parts), so one
  ciphertext of degree N carries N reals; with SEAL's seeded symmetric encryption only c0 is sent,
  i.e. one coefficient (≈ data-prime bits / 8 bytes after zstd) per parameter.
* scale 2^40 leaves the CKKS error around 2^-26 after 100 summands, below the decryption
  flooding noise (σ_coeff = 2^flood_log2_sigma in coefficient units, ≈ 4e-8 per value at
  N=4096) that protects the key when an aggregate is released (Li–Micciancio 2021).
* data-prime bits ≥ scale bits + log2(√2 · max_abs_value · max_summands) + 2 so the sum of
  ``max_summands`` vectors bounded by ``max_abs_value`` cannot wrap modulo q.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping

from pydantic import Field, model_validator

from securefed.config import StrictModel
from securefed.errors import InsecureParameters

# HomomorphicEncryption.org security standard (Albrecht et al. 2018), ternary secret, classical
# 128-bit: largest total coefficient-modulus bit count for each ring degree. Unknown N -> refused.
MAX_COEFF_MODULUS_BITS_128: Mapping[int, int] = MappingProxyType(
    {4096: 109, 8192: 218, 16384: 438, 32768: 881}
)

# SEAL primes are at most 60 bits; a prime must exceed the scale for encoding to succeed.
_MAX_PRIME_BITS = 60
_MIN_PRIME_BITS = 20
# RLWE error in SEAL has σ = 3.2; flooding below that would not hide anything.
_MIN_FLOOD_LOG2_SIGMA = 2
# Headroom bits beyond the summed magnitude: one for the sign, one for noise and rounding.
_HEADROOM_BITS = 2


class CkksParams(StrictModel):
    """One CKKS parameter set. Validated on construction; an unsafe set raises InsecureParameters."""

    name: str = Field(description="Name the federation pins in its configuration.")
    poly_modulus_degree: int = Field(description="Ring degree N (power of two, 4096..32768).")
    coeff_mod_bit_sizes: tuple[int, ...] = Field(
        description="Bit sizes of the modulus chain: data primes, then the special prime."
    )
    global_scale_bits: int = Field(description="log2 of the CKKS scale Δ.")
    max_abs_value: float = Field(description="Largest |x| a client may encrypt (callers pre-scale).")
    max_summands: int = Field(description="Most ciphertexts the server may add into one sum.")
    flood_log2_sigma: int = Field(
        description="log2 of the std of the Gaussian added at decryption, in coefficient units."
    )

    @model_validator(mode="after")
    def _check_security_and_capacity(self) -> "CkksParams":
        n = self.poly_modulus_degree
        bound = MAX_COEFF_MODULUS_BITS_128.get(n)
        if bound is None:
            raise InsecureParameters(
                f"CKKS parameter set {self.name!r}: poly_modulus_degree {n} is not one of "
                f"{sorted(MAX_COEFF_MODULUS_BITS_128)} (no 128-bit security bound known for it)"
            )
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 2:
            raise InsecureParameters(
                f"CKKS parameter set {self.name!r}: coeff_mod_bit_sizes needs a data prime and a special prime"
            )
        if any(b < _MIN_PRIME_BITS or b > _MAX_PRIME_BITS for b in bits):
            raise InsecureParameters(
                f"CKKS parameter set {self.name!r}: every prime must have {_MIN_PRIME_BITS}..{_MAX_PRIME_BITS} bits"
            )
        total = sum(bits)
        if total > bound:
            raise InsecureParameters(
                f"CKKS parameter set {self.name!r}: total coefficient modulus {total} bits exceeds the "
                f"128-bit security bound of {bound} bits for N={n}; use fewer or smaller primes"
            )
        if not (self.max_abs_value > 0 and math.isfinite(self.max_abs_value)):
            raise InsecureParameters(f"CKKS parameter set {self.name!r}: max_abs_value must be positive")
        if self.max_summands < 1:
            raise InsecureParameters(f"CKKS parameter set {self.name!r}: max_summands must be >= 1")
        if self.flood_log2_sigma < _MIN_FLOOD_LOG2_SIGMA:
            raise InsecureParameters(
                f"CKKS parameter set {self.name!r}: flood_log2_sigma must be >= {_MIN_FLOOD_LOG2_SIGMA}"
            )
        # |coefficient| <= Δ · max|slot| and a complex slot holds two reals (|z| <= √2 · max).
        data_bits = sum(self.data_prime_bit_sizes)
        needed = self.global_scale_bits + math.log2(
            math.sqrt(2) * self.max_abs_value * self.max_summands
        ) + _HEADROOM_BITS
        if needed > data_bits:
            raise InsecureParameters(
                f"CKKS parameter set {self.name!r}: {self.max_summands} summands of |x| <= "
                f"{self.max_abs_value} at scale 2^{self.global_scale_bits} need {needed:.1f} data-modulus "
                f"bits but only {data_bits} are available; lower max_summands/max_abs_value or the scale"
            )
        if self.global_scale_bits < 20:
            raise InsecureParameters(f"CKKS parameter set {self.name!r}: global_scale_bits must be >= 20")
        return self

    @property
    def data_prime_bit_sizes(self) -> tuple[int, ...]:
        """Primes a fresh ciphertext lives on (all but the special prime)."""
        return self.coeff_mod_bit_sizes[:-1]

    @property
    def coeff_bytes(self) -> int:
        """Bytes a packed ciphertext coefficient takes on the wire (a b-bit prime: ceil(b / 8))."""
        return -(-max(self.data_prime_bit_sizes) // 8)

    @property
    def slot_count(self) -> int:
        """Complex CKKS slots per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def chunk_size(self) -> int:
        """Real values per ciphertext: two per complex slot."""
        return self.poly_modulus_degree

    @property
    def scale(self) -> float:
        return float(2**self.global_scale_bits)

    @property
    def flood_sigma(self) -> float:
        """Std of the decryption flooding noise per real value (slot domain).

        The canonical embedding is √(N/2)·Δ times an isometry, so an iid Gaussian of std σ per real
        slot value is an iid Gaussian of std Δ·σ·√(2/N) per coefficient.
        """
        n = self.poly_modulus_degree
        return 2.0**self.flood_log2_sigma * math.sqrt(n / 2) / self.scale

    def chunks_for(self, length: int) -> int:
        return -(-length // self.chunk_size)


def _named(**kw) -> CkksParams:
    return CkksParams(**kw)


# Default: the smallest ring; 56-bit data prime, 53-bit special prime (109 bits total, the bound).
DEFAULT_PARAMS_NAME = "ckks-n4096-q56-s40"

PARAMETER_SETS: Mapping[str, CkksParams] = MappingProxyType(
    {
        p.name: p
        for p in (
            _named(
                name=DEFAULT_PARAMS_NAME,
                poly_modulus_degree=4096,
                coeff_mod_bit_sizes=(56, 53),
                global_scale_bits=40,
                max_abs_value=8.0,
                max_summands=1024,
                flood_log2_sigma=10,
            ),
            # More headroom for larger values (|x| <= 128), same bytes per parameter plus ~0.5.
            _named(
                name="ckks-n8192-q60-s40",
                poly_modulus_degree=8192,
                coeff_mod_bit_sizes=(60, 60),
                global_scale_bits=40,
                max_abs_value=128.0,
                max_summands=1024,
                flood_log2_sigma=10,
            ),
        )
    }
)


def get_params(name: str) -> CkksParams:
    """The named parameter set; an unknown name raises InsecureParameters."""
    try:
        return PARAMETER_SETS[name]
    except KeyError:
        raise InsecureParameters(
            f"unknown CKKS parameter set {name!r}; choose one of {sorted(PARAMETER_SETS)}"
        ) from None
