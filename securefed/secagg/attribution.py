"""Share encryption whose failures are attributable: who sent garbage, provably, and nothing more.

Each member u keeps one fresh X25519 *inbox key* per other cohort member and commits to them in its
signed round keys (a Merkle root, ``AdvertisedKeys.inbox_root``, bound into the session id). A member
j encrypts its shares for u under ``HKDF(X25519(c_sk_j, inbox_u[j]))`` and signs, once, the root of a
Merkle tree whose leaves fix each ciphertext and how it must decrypt (its own c_pk, the receiver's
inbox key for it and that receiver's root; ``session.share_leaf``); the server checks the signature on
receipt and hands each receiver its share with the signature and the share's proof. If u cannot
decrypt or decode it, u reveals the private half of ``inbox_u[j]``: that opens this
one ciphertext - u's shares of j's secrets, which u already holds - and no other message, no mask key
and none of u's secrets. Anyone holding the public round keys then decides (``judge``):

* j's signature covers the share, the revealed key is u's committed key for j, and the ciphertext does
  not decrypt or decode (wrong length, wrong x-coordinate): **j** sent garbage;
* it decrypts to well-formed shares, or the evidence does not check (another key, a ciphertext j never
  signed): **u** accused falsely.

An honest member is never the culprit: the server cannot forge j's signature, so it cannot make an
honest u accuse an honest j (u checks j's signature before it decrypts; a share that fails that check
was altered by the server and ends u's session instead, as before), and u cannot open j's ciphertext
under any key but the one j signed. Argued in protocols/secagg.md ("Attributable share failures").
Pure functions, no I/O.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from securefed.crypto.aead import decrypt_share, encrypt_share
from securefed.crypto.keys import (
    PURPOSE_SHARE_ENCRYPTION,
    AgreementKeyPair,
    IdentityKeyPair,
    derive_key,
    verify_signature,
    x25519_shared_secret,
)
from securefed.crypto.merkle import MerkleTree, root_from_proof
from securefed.crypto.shamir import SHARE_SIZE, Share
from securefed.errors import CryptoError
from securefed.secagg.messages import EncryptedShare, ShareComplaint
from securefed.secagg.session import complaint_payload, share_leaf, shares_payload


def share_key(private: bytes, peer_public: bytes, session_id: bytes, sender: int, receiver: int) -> bytes:
    """The AEAD key of the shares ``sender`` sends ``receiver``: the sender computes it with its c_sk and
    the receiver's inbox key for it, the receiver (or a judge given the revealed inbox key) with that
    inbox key's private half and the sender's c_pk."""
    return derive_key(x25519_shared_secret(private, peer_public), session_id=session_id,
                      purpose=PURPOSE_SHARE_ENCRYPTION, party_a=sender, party_b=receiver)


def encode_share_pair(b_share: Share, s_share: Share) -> bytes:
    return b_share.to_bytes() + s_share.to_bytes()


def decode_share_pair(data: bytes) -> tuple[Share, Share]:
    if len(data) != 2 * SHARE_SIZE:
        raise CryptoError("share plaintext has the wrong length")
    return Share.from_bytes(data[:SHARE_SIZE]), Share.from_bytes(data[SHARE_SIZE:])


def seal_share(plaintext: bytes, *, c_key: AgreementKeyPair, session_id: bytes, sender: int, receiver: int,
               inbox_key: bytes) -> EncryptedShare:
    """Encrypt ``plaintext`` to ``receiver``'s inbox key for ``sender`` (signed with the others: ``sign_shares``)."""
    key = share_key(c_key.private_bytes(), inbox_key, session_id, sender, receiver)
    return EncryptedShare(sender, receiver, encrypt_share(key, plaintext, session_id=session_id, sender=sender,
                                                          receiver=receiver))


def share_tree(shares: Sequence[EncryptedShare], *, sender_c_pk: bytes,
               inbox: Mapping[int, tuple[bytes, bytes]]) -> MerkleTree:
    """The tree a sender signs over its shares (sorted by receiver); ``inbox``: receiver -> (its inbox key
    for the sender, its inbox root)."""
    return MerkleTree([share_leaf(s.receiver, sender_c_pk, *inbox[s.receiver], s.ciphertext) for s in shares])


def sign_shares(shares: Sequence[EncryptedShare], *, identity: IdentityKeyPair, sender_c_pk: bytes, session_id: bytes,
                sender: int, inbox: Mapping[int, tuple[bytes, bytes]]) -> bytes:
    """The sender's one signature over all its shares (sorted by receiver)."""
    tree = share_tree(shares, sender_c_pk=sender_c_pk, inbox=inbox)
    return identity.sign(shares_payload(session_id, sender, tree.root))


def share_signed(share: EncryptedShare, *, sender_identity: bytes, session_id: bytes, sender_c_pk: bytes,
                 inbox_key: bytes, inbox_root: bytes, index: int, count: int) -> bool:
    """Whether the sender's signature covers ``share`` (its proof leads to the signed root): ``index`` is
    the receiver's position among the sender's ``count`` receivers, by id."""
    leaf = share_leaf(share.receiver, sender_c_pk, inbox_key, inbox_root, share.ciphertext)
    root = root_from_proof(leaf, index, count, share.proof)
    if root is None:
        return False
    try:
        verify_signature(sender_identity, share.signature, shares_payload(session_id, share.sender, root))
    except CryptoError:
        return False
    return True


def open_share(share: EncryptedShare, *, inbox_private: bytes, sender_c_pk: bytes, session_id: bytes,
               expected_x: int) -> tuple[Share, Share]:
    """Decrypt and decode one delivered share (its signature checked by the caller); ``CryptoError``
    when it does not decrypt, decode, or carry ``expected_x``."""
    key = share_key(inbox_private, sender_c_pk, session_id, share.sender, share.receiver)
    pair = decode_share_pair(decrypt_share(key, share.ciphertext, session_id=session_id, sender=share.sender,
                                           receiver=share.receiver))
    if pair[0].x != expected_x or pair[1].x != expected_x:
        raise CryptoError("a delivered share has the wrong Shamir x-coordinate")
    return pair


def make_complaint(share: EncryptedShare, *, identity: IdentityKeyPair, inbox_private: bytes,
                   session_id: bytes) -> ShareComplaint:
    """The complaint about one delivered share that failed ``open_share``."""
    sig = identity.sign(complaint_payload(session_id, share.receiver, share.sender, inbox_private, share.ciphertext))
    return ShareComplaint(share.sender, share.ciphertext, share.signature, inbox_private, sig, share.proof)


class Fault(Enum):
    ACCUSED = "accused"  # sent a share that does not decrypt or decode
    COMPLAINER = "complainer"  # accused falsely, or with evidence that does not check


@dataclass(frozen=True)
class Verdict:
    complainer: int
    accused: int
    fault: Fault
    reason: str
    evidence: Mapping[str, Any] | None = field(default=None, compare=False)  # ``evidence_record``: re-checkable

    @property
    def culprit(self) -> int:
        return self.accused if self.fault is Fault.ACCUSED else self.complainer


def describe(v: Verdict, name: Callable[[int], str] = lambda i: f"client {i}") -> str:
    """One line naming the culprit and what it did."""
    if v.fault is Fault.ACCUSED:
        return f"{name(v.accused)} sent a share that does not open to {name(v.complainer)} ({v.reason})"
    return f"{name(v.complainer)} accused {name(v.accused)} falsely ({v.reason})"


@dataclass(frozen=True)
class Context:
    """The public facts a judge needs for one (complainer, accused) pair of one session."""

    session_id: bytes
    complainer_identity: bytes  # Ed25519 public keys, from the members' certificates
    accused_identity: bytes
    accused_c_pk: bytes  # from the accused's signed round keys
    inbox_key: bytes  # the complainer's committed inbox key for the accused (a leaf under inbox_root)
    inbox_root: bytes  # the complainer's signed inbox root
    expected_x: int  # the complainer's Shamir x-coordinate for the accused's secrets
    share_index: int  # the complainer's position among the accused's receivers (its neighbours, by id)
    share_count: int  # how many receivers the accused has


def evidence_record(c: ShareComplaint, complainer: int, ctx: Context) -> dict[str, Any]:
    """Everything ``rejudge`` needs, as JSON-ready values (bytes in hex): what an auditor re-checks
    with nothing but the members' certified identity keys."""
    out: dict[str, Any] = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in vars(ctx).items()}
    out.update(complainer=complainer, accused=c.accused, ciphertext=c.ciphertext.hex(),
               share_signature=c.share_signature.hex(), inbox_private=c.inbox_private.hex(),
               complaint_signature=c.signature.hex(), share_proof=[h.hex() for h in c.share_proof])
    return out


def rejudge(record: Mapping[str, Any]) -> Verdict:
    """The verdict on an ``evidence_record`` (``CryptoError``/``ValueError``/``KeyError`` if malformed)."""
    ints = ("expected_x", "share_index", "share_count")
    ctx = Context(**{k: (int(record[k]) if k in ints else bytes.fromhex(record[k])) for k in Context.__dataclass_fields__})
    c = ShareComplaint(int(record["accused"]), bytes.fromhex(record["ciphertext"]),
                       bytes.fromhex(record["share_signature"]), bytes.fromhex(record["inbox_private"]),
                       bytes.fromhex(record["complaint_signature"]), tuple(bytes.fromhex(h) for h in record["share_proof"]))
    return judge(c, int(record["complainer"]), ctx)


def judge(c: ShareComplaint, complainer: int, ctx: Context) -> Verdict:
    """Who is at fault for ``c``. ``CryptoError`` when the complaint is not signed by the complainer
    (then it proves nothing about anyone: the caller refuses the message)."""
    verify_signature(ctx.complainer_identity, c.signature,
                     complaint_payload(ctx.session_id, complainer, c.accused, c.inbox_private, c.ciphertext))

    def verdict(fault: Fault, reason: str) -> Verdict:
        return Verdict(complainer, c.accused, fault, reason, evidence_record(c, complainer, ctx))

    try:
        revealed = AgreementKeyPair.from_private_bytes(c.inbox_private).public_bytes()
    except CryptoError:
        return verdict(Fault.COMPLAINER, "the revealed inbox key is not an X25519 key")
    if not hmac.compare_digest(revealed, ctx.inbox_key):
        return verdict(Fault.COMPLAINER, "the revealed inbox key is not the one it committed to for the accused")
    share = EncryptedShare(c.accused, complainer, c.ciphertext, c.share_signature, c.share_proof)
    if not share_signed(share, sender_identity=ctx.accused_identity, session_id=ctx.session_id,
                        sender_c_pk=ctx.accused_c_pk, inbox_key=ctx.inbox_key, inbox_root=ctx.inbox_root,
                        index=ctx.share_index, count=ctx.share_count):
        return verdict(Fault.COMPLAINER, "the accused never signed that ciphertext")
    try:
        open_share(share, inbox_private=c.inbox_private, sender_c_pk=ctx.accused_c_pk, session_id=ctx.session_id,
                   expected_x=ctx.expected_x)
    except CryptoError as exc:
        return verdict(Fault.ACCUSED, f"its signed share does not open under the complainer's inbox key ({exc})")
    return verdict(Fault.COMPLAINER, "the share it complained about decrypts to well-formed shares")
