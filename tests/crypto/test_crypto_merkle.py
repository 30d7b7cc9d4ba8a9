"""The Merkle tree behind the inbox-key commitments: RFC 6962 hashing (known-answer roots from the
Certificate Transparency reference tests) and every proof of every leaf for sizes 1..33, with tampering."""

from __future__ import annotations

import pytest

from securefed.crypto.merkle import MerkleTree, verify_inclusion

# certificate-transparency merkle_tree_test: the 8 leaves and the root of each prefix.
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_match_the_rfc6962_reference(n):
    assert MerkleTree(CT_LEAVES[:n]).root.hex() == CT_ROOTS[n - 1]


def test_every_proof_verifies_and_any_change_breaks_it():
    for n in range(1, 34):
        leaves = [bytes([i, n]) for i in range(n)]
        tree = MerkleTree(leaves)
        for i, leaf in enumerate(leaves):
            proof = tree.proof(i)
            assert verify_inclusion(tree.root, leaf, i, n, proof)
            assert not verify_inclusion(tree.root, leaf + b"x", i, n, proof)
            if n > 1:
                assert not verify_inclusion(tree.root, leaf, (i + 1) % n, n, proof)
                bad = (bytes([proof[0][0] ^ 1]) + proof[0][1:],) + proof[1:]
                assert not verify_inclusion(tree.root, leaf, i, n, bad)
                assert not verify_inclusion(tree.root, leaf, i, n, proof[:-1])


def test_malformed_proofs_are_refused_not_crashing():
    tree = MerkleTree([b"a", b"b", b"c"])
    for proof in ((b"short",), "not a list", tuple([bytes(32)] * 70)):
        assert not verify_inclusion(tree.root, b"a", 0, 3, proof)  # type: ignore[arg-type]
    assert not verify_inclusion(tree.root, b"a", -1, 3, tree.proof(0))
    assert not verify_inclusion(tree.root, b"a", 0, 0, tree.proof(0))
