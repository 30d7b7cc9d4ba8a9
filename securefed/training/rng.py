"""Noise and sampling randomness for DP-SGD.

Opacus' own ``secure_mode`` needs ``torchcsprng``, which does not exist for this torch. We provide the
equivalent: :class:`CsprngSource` expands a fresh 256-bit key from ``os.urandom`` with AES-256-CTR
(``cryptography``) into uniform 53-bit doubles, turns them into Gaussians with Box-Muller, and, like Opacus'
secure mode, returns the sum of four draws divided by two (same variance) to resist floating-point
attacks on the Gaussian mechanism (Mironov 2012; Holohan & Braghin 2021, sec. 5.1).

:class:`TorchSource` is the fast, *not* cryptographically secure path (torch's Mersenne-Twister/Philox),
for tests and benchmarks only; :class:`SeededSource` is the CSPRNG's sampler on a caller's key, for
reproducible simulations. Training results record whether the source was secure (``secure_rng``).
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_TWO_POW_M53 = 1.0 / (1 << 53)


class RandomSource(Protocol):
    secure: bool

    def gaussian(self, n: int, std: float) -> np.ndarray: ...  # float64, shape (n,)

    def bernoulli(self, n: int, p: float) -> np.ndarray: ...  # bool, shape (n,)


class CsprngSource:
    """AES-256-CTR keystream (key and nonce from os.urandom) -> uniforms -> Gaussians / Bernoullis."""

    secure = True

    def __init__(self) -> None:
        self._enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()

    def _uint64(self, n: int) -> np.ndarray:
        # CTR keystream = encryption of zeros; never reused (one encryptor, advancing counter).
        return np.frombuffer(self._enc.update(bytes(8 * n)), dtype="<u8")

    def uniform_open(self, n: int) -> np.ndarray:
        """n doubles uniform on (0, 1] with 53 random bits each (never 0, so log() is finite)."""
        return ((self._uint64(n) >> np.uint64(11)).astype(np.float64) + 1.0) * _TWO_POW_M53

    def _standard_normal(self, n: int) -> np.ndarray:
        m = (n + 1) // 2
        u1 = self.uniform_open(m)
        u2 = self.uniform_open(m)
        r = np.sqrt(-2.0 * np.log(u1))
        theta = 2.0 * math.pi * u2
        return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]

    def gaussian(self, n: int, std: float) -> np.ndarray:
        if std == 0.0 or n == 0:
            return np.zeros(n, dtype=np.float64)
        z = self._standard_normal(4 * n).reshape(4, n).sum(axis=0) / 2.0
        return z * std

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        return self.uniform_open(n) <= p


class SeededSource(CsprngSource):
    """The same sampler as :class:`CsprngSource` on the keystream of a key the caller chose: two runs with
    one key draw the same noise and batches, in any process. Whoever knows the key can subtract the
    noise, so it is NOT secret (``secure = False``) and ``train_local`` refuses it in secure mode: for
    reproducible simulations (``securefed simulate --reproducible``) and tests only."""

    secure = False

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise ValueError("SeededSource needs a 32-byte key")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()


class TorchSource:
    """torch's default generator: fast, reproducible with torch.manual_seed, NOT secure."""

    secure = False

    def gaussian(self, n: int, std: float) -> np.ndarray:
        if std == 0.0 or n == 0:
            return np.zeros(n, dtype=np.float64)
        return torch.normal(0.0, std, size=(n,), dtype=torch.float64).numpy()

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        return (torch.rand(n, dtype=torch.float64) < p).numpy()
