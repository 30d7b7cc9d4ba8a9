"""The messages of the secure-aggregation protocol: frozen dataclasses of plain fields.

One message type per (direction, stage). Every message carries ``session_id`` and ``stage``
so a message from another round, or replayed from an earlier stage, is refused. Before the
round keys exist (stage ADVERTISE_KEYS) the ``session_id`` field carries the *plan digest*
(a hash of everything in the plan); from KEY broadcast on it is the full session id, which
also binds every client's round keys. Fields are ints, bytes, floats, tuples of small frozen
records, and one numpy vector, so the daemons can map them to protobuf field by field.

``validate()`` checks sizes, lengths and ranges only (no cryptography, no protocol state);
the state machines call it first and turn failures into ``ProtocolAbort`` (client) or
``InvalidMessage`` (server).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum, IntEnum

import numpy as np

from securefed.errors import InvalidMessage

SESSION_ID_SIZE = 32
KEY_SIZE = 32  # X25519 and Ed25519 public keys
SIGNATURE_SIZE = 64  # Ed25519
HASH_SIZE = 32
MAX_PLAN_BYTES = 1 << 20
MAX_CIPHERTEXT_BYTES = 1024  # two Shamir shares of 32-byte secrets + AEAD nonce/tag, with room
MAX_SHARE_BYTES = 512
MAX_CLIENT_ID = 2**63 - 1
MAX_VECTOR_LENGTH = 1 << 31
MAX_PROOF_HASHES = 64  # a Merkle proof over at most 2^64 leaves
MAX_COHORT = 1 << 20  # inbox keys a client may advertise (one per other cohort member)


class Stage(IntEnum):
    """Protocol stages. A server message of stage S asks for the client message of stage S."""

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY = 4
    UNMASK = 5


class ClientStage(Enum):
    """Where a client is: the stage whose server message it waits for, or an end state."""

    AWAIT_SETUP = Stage.ADVERTISE_KEYS
    AWAIT_KEYS = Stage.SHARE_KEYS
    AWAIT_SHARES = Stage.MASKED_INPUT
    AWAIT_SURVIVORS = Stage.CONSISTENCY
    AWAIT_UNMASK = Stage.UNMASK
    DONE = 6
    ABORTED = 7


class ServerStage(Enum):
    """Where the server is: the stage whose client messages it collects, or an end state."""

    COLLECT_KEYS = Stage.ADVERTISE_KEYS
    COLLECT_SHARES = Stage.SHARE_KEYS
    COLLECT_MASKED_INPUTS = Stage.MASKED_INPUT
    COLLECT_SIGNATURES = Stage.CONSISTENCY
    COLLECT_UNMASK_SHARES = Stage.UNMASK
    DONE = 6
    ABORTED = 7


def _fail(msg: str) -> None:
    raise InvalidMessage(msg)


def _check_bytes(name: str, value: object, size: int | None = None, max_size: int | None = None) -> None:
    if not isinstance(value, bytes):
        _fail(f"{name} must be bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        _fail(f"{name} must be {size} bytes, got {len(value)}")
    if max_size is not None and len(value) > max_size:
        _fail(f"{name} is {len(value)} bytes, at most {max_size} allowed")


def _check_id(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CLIENT_ID:
        _fail(f"{name} must be an integer in [0, 2^63 - 1], got {value!r}")


def _check_ids(name: str, values: object, *, sorted_unique: bool = True) -> None:
    if not isinstance(values, tuple):
        _fail(f"{name} must be a tuple, got {type(values).__name__}")
    for v in values:
        _check_id(f"{name} entry", v)
    if sorted_unique and any(a >= b for a, b in zip(values, values[1:])):
        _fail(f"{name} must be strictly increasing (sorted, no duplicates)")


def _check_proof(name: str, proof: object) -> None:
    if not isinstance(proof, tuple) or len(proof) > MAX_PROOF_HASHES:
        _fail(f"{name} must be a tuple of at most {MAX_PROOF_HASHES} hashes")
    for h in proof:
        _check_bytes(f"{name} hash", h, HASH_SIZE)


def _check_tuple_of(name: str, values: object, kind: type) -> None:
    if not isinstance(values, tuple) or not all(isinstance(v, kind) for v in values):
        _fail(f"{name} must be a tuple of {kind.__name__}")


def _check_head(msg: "_Message") -> None:
    _check_bytes("session_id", msg.session_id, SESSION_ID_SIZE)
    if not isinstance(msg.stage, Stage) or msg.stage is not type(msg).STAGE:
        _fail(f"{type(msg).__name__} must carry stage {type(msg).STAGE.name}, got {msg.stage!r}")


class _Message:
    STAGE: Stage
    session_id: bytes
    stage: Stage

    def validate(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


# ---- records nested in messages ---------------------------------------------------------------

@dataclass(frozen=True)
class CohortMember:
    client_id: int
    identity_key: bytes  # long-lived Ed25519 public key (from the client's certificate)

    def validate(self) -> None:
        _check_id("cohort client_id", self.client_id)
        _check_bytes("cohort identity_key", self.identity_key, KEY_SIZE)


@dataclass(frozen=True)
class AdvertisedKeys:
    client_id: int
    c_pk: bytes  # X25519 public key: the sender's side of share encryption
    s_pk: bytes  # X25519 public key for pairwise masks
    signature: bytes  # Ed25519 by the identity key over (plan digest, client_id, c_pk, s_pk, inbox_root)
    # Merkle root over this client's inbox keys, one X25519 public key per other cohort member (in id
    # order): the member j encrypts its shares to this client under DH(c_sk_j, inbox key for j), so
    # this client can later reveal the private half for that one pair as evidence (protocols/secagg.md).
    inbox_root: bytes = bytes(HASH_SIZE)

    def validate(self) -> None:
        _check_id("client_id", self.client_id)
        _check_bytes("c_pk", self.c_pk, KEY_SIZE)
        _check_bytes("s_pk", self.s_pk, KEY_SIZE)
        _check_bytes("signature", self.signature, SIGNATURE_SIZE)
        _check_bytes("inbox_root", self.inbox_root, HASH_SIZE)


@dataclass(frozen=True)
class InboxKey:
    """``owner``'s inbox key for the recipient of the key broadcast, with its Merkle proof under
    ``owner``'s signed inbox root."""

    owner: int
    key: bytes
    proof: tuple[bytes, ...]

    def validate(self) -> None:
        _check_id("inbox key owner", self.owner)
        _check_bytes("inbox key", self.key, KEY_SIZE)
        _check_proof("inbox key proof", self.proof)


@dataclass(frozen=True)
class EncryptedShare:
    sender: int
    receiver: int
    ciphertext: bytes  # AEAD of (share of b_sender, share of s_sk_sender), AD = session, sender, receiver
    # As delivered: the sender's signature over the root of its share tree, and this share's Merkle proof
    # in it (session.share_leaf): what makes a share that does not decrypt the sender's fault, provably.
    # Empty in ShareKeys (the sender signs the message once; the server computes the proofs).
    signature: bytes = b""
    proof: tuple[bytes, ...] = ()

    def validate(self) -> None:
        _check_id("sender", self.sender)
        _check_id("receiver", self.receiver)
        _check_bytes("ciphertext", self.ciphertext, max_size=MAX_CIPHERTEXT_BYTES)
        if self.signature:
            _check_bytes("share signature", self.signature, SIGNATURE_SIZE)
        _check_proof("share proof", self.proof)


@dataclass(frozen=True)
class ShareComplaint:
    """Evidence that ``accused`` sent the complainer a share that does not decrypt or decode: the
    accused's signed ciphertext and the private half of the complainer's inbox key for the accused
    (it opens that one ciphertext and nothing else), signed by the complainer."""

    accused: int
    ciphertext: bytes
    share_signature: bytes  # the accused's signature over its share tree, as delivered
    inbox_private: bytes  # X25519 private key: the complainer's inbox key for the accused
    signature: bytes  # Ed25519 by the complainer over (session, complainer, accused, inbox_private, H(ct))
    share_proof: tuple[bytes, ...] = ()  # the share's Merkle proof in the accused's tree, as delivered

    def validate(self) -> None:
        _check_id("accused", self.accused)
        _check_bytes("complaint ciphertext", self.ciphertext, max_size=MAX_CIPHERTEXT_BYTES)
        _check_bytes("complaint share signature", self.share_signature, SIGNATURE_SIZE)
        _check_proof("complaint share proof", self.share_proof)
        _check_bytes("complaint inbox key", self.inbox_private, KEY_SIZE)
        _check_bytes("complaint signature", self.signature, SIGNATURE_SIZE)


@dataclass(frozen=True)
class SignedSurvivors:
    client_id: int
    signature: bytes  # Ed25519 over (session id, survivor list)

    def validate(self) -> None:
        _check_id("signer", self.client_id)
        _check_bytes("consistency signature", self.signature, SIGNATURE_SIZE)


@dataclass(frozen=True)
class MaskedWith:
    client_id: int
    signature: bytes  # Ed25519 over (session id, client_id, the senders whose shares it received)

    def validate(self) -> None:
        _check_id("masked_with client_id", self.client_id)
        _check_bytes("masked_with signature", self.signature, SIGNATURE_SIZE)


@dataclass(frozen=True)
class RevealedShare:
    owner: int  # whose secret this is a share of
    share: bytes  # crypto.shamir.Share.to_bytes()

    def validate(self) -> None:
        _check_id("share owner", self.owner)
        _check_bytes("share", self.share, max_size=MAX_SHARE_BYTES)


# ---- server -> client -------------------------------------------------------------------------

@dataclass(frozen=True)
class RoundSetup(_Message):
    """The plan: round, parameters, model, cohort. ``session_id`` is the plan digest."""

    STAGE = Stage.ADVERTISE_KEYS
    session_id: bytes
    stage: Stage
    round_id: int
    plan: bytes  # opaque canonical plan bytes from the coordinator (strategy parameters etc.)
    model_hash: bytes  # SHA-256 of the global model the update is computed against
    vector_length: int
    threshold: int
    neighbour_degree: int  # 0 = complete graph
    ring_bits: int
    frac_bits: int
    clip: float
    cohort: tuple[CohortMember, ...]

    def validate(self) -> None:
        _check_head(self)
        _check_id("round_id", self.round_id)
        _check_bytes("plan", self.plan, max_size=MAX_PLAN_BYTES)
        _check_bytes("model_hash", self.model_hash, HASH_SIZE)
        for name in ("vector_length", "threshold", "neighbour_degree", "ring_bits", "frac_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                _fail(f"{name} must be a non-negative integer, got {v!r}")
        if not 1 <= self.vector_length <= MAX_VECTOR_LENGTH:
            _fail(f"vector_length must be in [1, 2^31], got {self.vector_length}")
        if self.ring_bits not in (32, 64):
            _fail(f"ring_bits must be 32 or 64, got {self.ring_bits}")
        if not isinstance(self.clip, float) or not math.isfinite(self.clip) or self.clip <= 0:
            _fail(f"clip must be a positive finite float, got {self.clip!r}")
        _check_tuple_of("cohort", self.cohort, CohortMember)
        for m in self.cohort:
            m.validate()
        ids = [m.client_id for m in self.cohort]
        if ids != sorted(set(ids)):
            _fail("cohort must be sorted by client_id with no duplicates")


@dataclass(frozen=True)
class KeyBroadcast(_Message):
    """Every advertised key set (U1), sorted by client id."""

    STAGE = Stage.SHARE_KEYS
    session_id: bytes
    stage: Stage
    keys: tuple[AdvertisedKeys, ...]
    inbox_keys: tuple[InboxKey, ...] = ()  # the recipient's neighbours' inbox keys for it, sorted by owner

    def validate(self) -> None:
        _check_head(self)
        _check_tuple_of("keys", self.keys, AdvertisedKeys)
        for k in self.keys:
            k.validate()
        ids = [k.client_id for k in self.keys]
        if ids != sorted(set(ids)):
            _fail("keys must be sorted by client_id with no duplicates")
        _check_tuple_of("inbox_keys", self.inbox_keys, InboxKey)
        for k in self.inbox_keys:
            k.validate()
        owners = [k.owner for k in self.inbox_keys]
        if owners != sorted(set(owners)):
            _fail("inbox_keys must be sorted by owner with no duplicates")


@dataclass(frozen=True)
class ShareDelivery(_Message):
    """The encrypted shares addressed to ``recipient`` by its neighbours that sent theirs (U2)."""

    STAGE = Stage.MASKED_INPUT
    session_id: bytes
    stage: Stage
    recipient: int
    shares: tuple[EncryptedShare, ...]

    def validate(self) -> None:
        _check_head(self)
        _check_id("recipient", self.recipient)
        _check_tuple_of("shares", self.shares, EncryptedShare)
        for s in self.shares:
            s.validate()
        senders = [s.sender for s in self.shares]
        if len(set(senders)) != len(senders):
            _fail("shares must come from distinct senders")


@dataclass(frozen=True)
class SurvivorList(_Message):
    """U3 (whose masked input the server accepted) and U2 (who sent shares), which each survivor signs,
    with the masked-with signatures of the recipient's surviving neighbours (each says whose shares that
    neighbour received, i.e. whom it masked with)."""

    STAGE = Stage.CONSISTENCY
    session_id: bytes
    stage: Stage
    survivors: tuple[int, ...]
    share_senders: tuple[int, ...]
    masked_with: tuple[MaskedWith, ...]

    def validate(self) -> None:
        _check_head(self)
        _check_ids("survivors", self.survivors)
        _check_ids("share_senders", self.share_senders)
        _check_tuple_of("masked_with", self.masked_with, MaskedWith)
        for s in self.masked_with:
            s.validate()
        ids = [s.client_id for s in self.masked_with]
        if ids != sorted(set(ids)):
            _fail("masked_with must be sorted by client_id with no duplicates")


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """U3 again, the dropped clients U2 \\ U3 (both as signed), and the consistency signatures collected (U4)."""

    STAGE = Stage.UNMASK
    session_id: bytes
    stage: Stage
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[SignedSurvivors, ...]

    def validate(self) -> None:
        _check_head(self)
        _check_ids("survivors", self.survivors)
        _check_ids("dropped", self.dropped)
        _check_tuple_of("signatures", self.signatures, SignedSurvivors)
        for s in self.signatures:
            s.validate()
        ids = [s.client_id for s in self.signatures]
        if ids != sorted(set(ids)):
            _fail("signatures must be sorted by client_id with no duplicates")


# ---- client -> server -------------------------------------------------------------------------

@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    STAGE = Stage.ADVERTISE_KEYS
    session_id: bytes  # plan digest
    stage: Stage
    client_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    inbox_root: bytes = bytes(HASH_SIZE)
    inbox_keys: tuple[bytes, ...] = ()  # one per other cohort member, in id order (the root's leaves)

    def validate(self) -> None:
        _check_head(self)
        self.keys().validate()
        if not isinstance(self.inbox_keys, tuple) or len(self.inbox_keys) > MAX_COHORT:
            _fail(f"inbox_keys must be a tuple of at most {MAX_COHORT} keys")
        for k in self.inbox_keys:
            _check_bytes("inbox key", k, KEY_SIZE)

    def keys(self) -> AdvertisedKeys:
        return AdvertisedKeys(self.client_id, self.c_pk, self.s_pk, self.signature, self.inbox_root)


@dataclass(frozen=True)
class ShareKeys(_Message):
    STAGE = Stage.SHARE_KEYS
    session_id: bytes
    stage: Stage
    client_id: int
    shares: tuple[EncryptedShare, ...]  # one per neighbour, sender = client_id, sorted by receiver
    signature: bytes = b""  # Ed25519 by the sender over the root of its share tree (session.shares_payload)

    def validate(self) -> None:
        _check_head(self)
        _check_id("client_id", self.client_id)
        _check_bytes("shares signature", self.signature, SIGNATURE_SIZE)
        _check_tuple_of("shares", self.shares, EncryptedShare)
        for s in self.shares:
            s.validate()
            if s.sender != self.client_id:
                _fail("every share must name the sending client as sender")
        receivers = [s.receiver for s in self.shares]
        if len(set(receivers)) != len(receivers) or self.client_id in receivers:
            _fail("shares must go to distinct receivers other than the sender")


@dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    STAGE = Stage.MASKED_INPUT
    session_id: bytes
    stage: Stage
    client_id: int
    masked: np.ndarray = field(repr=False)  # uint32 (ring 32) or uint64 (ring 64), 1-D
    # Ed25519 over (session id, client_id, sorted senders whose shares it received = whom it masked with)
    signature: bytes
    complaints: tuple[ShareComplaint, ...] = ()  # delivered shares that did not decrypt, with evidence

    def validate(self) -> None:
        _check_head(self)
        _check_id("client_id", self.client_id)
        _check_bytes("masked-with signature", self.signature, SIGNATURE_SIZE)
        _check_tuple_of("complaints", self.complaints, ShareComplaint)
        for c in self.complaints:
            c.validate()
        accused = [c.accused for c in self.complaints]
        if len(set(accused)) != len(accused) or self.client_id in accused:
            _fail("complaints must name distinct senders other than the complainer")
        if not isinstance(self.masked, np.ndarray) or self.masked.ndim != 1:
            _fail("masked must be a 1-D numpy array")
        if self.masked.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            _fail(f"masked must be uint32 or uint64, got {self.masked.dtype}")

    def payload_bytes(self) -> int:
        return int(self.masked.nbytes)


@dataclass(frozen=True)
class ConsistencySignature(_Message):
    STAGE = Stage.CONSISTENCY
    session_id: bytes
    stage: Stage
    client_id: int
    signature: bytes

    def validate(self) -> None:
        _check_head(self)
        _check_id("client_id", self.client_id)
        _check_bytes("signature", self.signature, SIGNATURE_SIZE)


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    STAGE = Stage.UNMASK
    session_id: bytes
    stage: Stage
    client_id: int
    self_mask_shares: tuple[RevealedShare, ...]  # shares of b_u, u a surviving neighbour (or self)
    key_shares: tuple[RevealedShare, ...]  # shares of s_sk_u, u a dropped neighbour

    def validate(self) -> None:
        _check_head(self)
        _check_id("client_id", self.client_id)
        _check_tuple_of("self_mask_shares", self.self_mask_shares, RevealedShare)
        _check_tuple_of("key_shares", self.key_shares, RevealedShare)
        owners_b = [s.owner for s in self.self_mask_shares]
        owners_s = [s.owner for s in self.key_shares]
        for s in self.self_mask_shares + self.key_shares:
            s.validate()
        if len(set(owners_b)) != len(owners_b) or len(set(owners_s)) != len(owners_s):
            _fail("at most one share per owner and kind")
        if set(owners_b) & set(owners_s):
            # Both shares of one client would let the server unmask that client's input.
            _fail("a response must never carry both the self-mask share and the key share of one client")


ServerMessage = RoundSetup | KeyBroadcast | ShareDelivery | SurvivorList | UnmaskRequest
ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskResponse

SERVER_MESSAGE_TYPES: tuple[type, ...] = (RoundSetup, KeyBroadcast, ShareDelivery, SurvivorList, UnmaskRequest)
CLIENT_MESSAGE_TYPES: tuple[type, ...] = (AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskResponse)
