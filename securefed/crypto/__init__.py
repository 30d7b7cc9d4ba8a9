"""securefed.crypto: raw primitives; use securefed.secagg / securefed.he.

Like ``cryptography.hazmat``, everything here is a sharp tool: X25519/Ed25519 keys and HKDF
(:mod:`.keys`), AES-256-CTR mask expansion (:mod:`.prg`), Shamir secret sharing (:mod:`.shamir`),
share encryption with ChaCha20-Poly1305 (:mod:`.aead`) and fixed-point ring encoding
(:mod:`.fixedpoint`). Each function checks the type and length of its inputs and raises a
:class:`securefed.errors.SecureFedError` subclass, but none of them can stop a caller from, say,
reusing a mask key across rounds. Protocol code should go through ``securefed.secagg`` or
``securefed.he``, which only expose whole, safe operations.
"""
