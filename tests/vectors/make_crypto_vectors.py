"""Regenerate the computed known-answer vectors for securefed.crypto (prg, shamir, aead).

Run once: ``python tests/vectors/make_crypto_vectors.py``. Everything here is computed WITHOUT
securefed code, so the tests compare the implementation against an independent computation:
mask words come from AES-256 in ECB mode applied by hand to the big-endian counter blocks
0, 1, 2, ...; Shamir shares from plain Horner evaluation mod 2^521 - 1; AEAD ciphertexts from
the raw ChaCha20Poly1305 primitive with the documented associated-data layout.
The RFC vectors (x25519, ed25519, hkdf) are typed in from the RFCs and not generated here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

HERE = Path(__file__).parent
P521 = 2**521 - 1


def _dump(path: Path, cases: list[dict]) -> None:
    path.write_text(json.dumps(cases, indent=1) + "\n")


def ecb_keystream_words(key: bytes, indices: list[int], ring_bits: int) -> list[int]:
    """Words at ``indices`` of the AES-256-CTR(counter block 0) stream, via ECB on counter blocks."""
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    size = ring_bits // 8
    out = []
    for j in indices:
        block_index, offset = divmod(j * size, 16)
        block = ecb.update(block_index.to_bytes(16, "big"))
        out.append(int.from_bytes(block[offset : offset + size], "little"))
    return out


def prg_vectors() -> list[dict]:
    cases = []
    keys = {
        "zero-key": bytes(32),
        "counting-key": bytes(range(32)),
        "ff-key": b"\xff" * 32,
        "text-key": b"securefed mask vector key 32 by.",
    }
    for name, key in keys.items():
        assert len(key) == 32
        for ring_bits in (32, 64):
            per_chunk = (1 << 18) // (ring_bits // 8)  # elements per 256 KiB internal chunk
            indices = list(range(8)) + [per_chunk - 1, per_chunk, per_chunk + 1, 2 * per_chunk + 5]
            ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
            first_blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(4))
            cases.append(
                {
                    "id": f"{name}-ring{ring_bits}",
                    "key": key.hex(),
                    "ring_bits": ring_bits,
                    "d": indices[-1] + 1,
                    "indices": indices,
                    "words": [str(w) for w in ecb_keystream_words(key, indices, ring_bits)],
                    "keystream_64": first_blocks.hex(),
                }
            )
    return cases


def shamir_vectors() -> list[dict]:
    cases = []
    specs = [
        ("t1-n1", bytes(range(32)), 1, []),
        ("t2-n3-small", (42).to_bytes(32, "big"), 3, [7]),
        (
            "t3-n5",
            bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
            5,
            [123456789, P521 - 1],
        ),
        ("t4-n7-16byte", b"sixteen byte key", 7, [1, 2, 3]),
        ("t5-n5-maxcoef", b"\xff" * 32, 5, [P521 - 1, P521 - 2, P521 - 3, P521 - 4]),
    ]
    for name, secret, n, coefs in specs:
        poly = [int.from_bytes(secret, "big"), *coefs]
        shares = []
        for x in range(1, n + 1):
            y = sum(c * pow(x, k, P521) for k, c in enumerate(poly)) % P521
            shares.append({"x": x, "y": hex(y)})
        cases.append(
            {
                "id": name,
                "secret": secret.hex(),
                "n": n,
                "t": len(coefs) + 1,
                "coefficients": [hex(c) for c in coefs],
                "shares": shares,
            }
        )
    return cases


def aead_vectors() -> list[dict]:
    cases = []
    specs = [
        ("share-74B", bytes(range(32)), bytes(range(100, 112)), bytes(range(74)), b"session-0001", 3, 9),
        ("empty", b"\x42" * 32, bytes(12), b"", b"\x00" * 32, 0, 2**64 - 1),
        ("two-shares", bytes(range(32, 64)), b"nonce-12byte", b"\x01" * 148, bytes(range(32)), 17, 4),
    ]
    for name, key, nonce, pt, sid, sender, receiver in specs:
        ad = sid + struct.pack(">Q", sender) + struct.pack(">Q", receiver)
        ct = nonce + ChaCha20Poly1305(key).encrypt(nonce, pt, ad)
        cases.append(
            {
                "id": name,
                "key": key.hex(),
                "plaintext": pt.hex(),
                "session_id": sid.hex(),
                "sender": sender,
                "receiver": receiver,
                "ciphertext": ct.hex(),
            }
        )
    return cases


def shamir_combine_vectors(generated: list[dict]) -> tuple[list[dict], list[dict]]:
    """verify: share subsets that must reconstruct; invalid: share sets combine must refuse."""
    by_id = {c["id"]: c for c in generated}
    verify = []
    for cid, pick in [
        ("t2-n3-small", [1, 2]),
        ("t2-n3-small", [3, 1]),
        ("t3-n5", [5, 1, 3]),
        ("t3-n5", [1, 2, 3, 4, 5]),
        ("t4-n7-16byte", [7, 6, 5, 4]),
        ("t5-n5-maxcoef", [1, 2, 3, 4, 5]),
        ("t1-n1", [1]),
    ]:
        c = by_id[cid]
        verify.append(
            {
                "id": f"{cid}-{''.join(map(str, pick))}",
                "t": c["t"],
                "secret": c["secret"],
                "secret_len": len(c["secret"]) // 2,
                "shares": [c["shares"][x - 1] for x in pick],
            }
        )
    base = by_id["t3-n5"]
    s = base["shares"]
    bad_y = hex((int(s[2]["y"], 16) + 1) % P521)
    invalid = [
        {"id": "too-few", "t": 3, "shares": s[:2]},
        {"id": "none", "t": 1, "shares": []},
        {"id": "duplicate-x", "t": 3, "shares": [s[0], s[1], s[1]]},
        {"id": "duplicate-x-different-y", "t": 3, "shares": [s[0], s[1], {"x": 2, "y": s[2]["y"]}]},
        {"id": "x-zero", "t": 3, "shares": [{"x": 0, "y": s[0]["y"]}, s[1], s[2]]},
        {"id": "x-negative", "t": 3, "shares": [{"x": -1, "y": s[0]["y"]}, s[1], s[2]]},
        {"id": "y-equals-prime", "t": 3, "shares": [s[0], s[1], {"x": 3, "y": hex(P521)}]},
        {"id": "y-negative", "t": 3, "shares": [s[0], s[1], {"x": 3, "y": "-0x1"}]},
        {"id": "inconsistent-extra-share", "t": 3, "shares": [s[0], s[1], s[3], {"x": 3, "y": bad_y}]},
    ]
    return verify, invalid


if __name__ == "__main__":
    _dump(HERE / "prg" / "verify.json", prg_vectors())
    shamir_generated = shamir_vectors()
    _dump(HERE / "shamir" / "generate.json", shamir_generated)
    shamir_verify, shamir_invalid = shamir_combine_vectors(shamir_generated)
    _dump(HERE / "shamir" / "verify.json", shamir_verify)
    _dump(HERE / "shamir" / "invalid.json", shamir_invalid)
    _dump(HERE / "aead" / "verify.json", aead_vectors())
