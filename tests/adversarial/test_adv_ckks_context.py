"""CKKS: the server's context must hold no secret key; decoders of contexts/ciphertexts must not crash.

The first tests pin down the TenSEAL behaviour the design relies on (a context serialised without its
secret key cannot decrypt); the securefed.he tests below them drive the real wrapper.
"""

from __future__ import annotations

import pytest
import tenseal as ts


def _secret_context() -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2**40
    return ctx


def test_a_context_serialised_without_its_secret_key_cannot_decrypt():
    secret = _secret_context()
    public = ts.context_from(secret.serialize(save_secret_key=False))
    assert secret.is_private() and not public.is_private()
    a = ts.ckks_vector(public, [1.0, 2.0, 3.0])
    b = ts.ckks_vector(public, [0.5, -1.0, 4.0])
    total = a + b  # the server can add ...
    with pytest.raises(ValueError, match="secret"):
        total.decrypt()  # ... but not read
    # Only a holder of the secret context reads the sum.
    back = ts.ckks_vector_from(secret, total.serialize()).decrypt()
    assert back == pytest.approx([1.5, 1.0, 7.0], abs=1e-4)
