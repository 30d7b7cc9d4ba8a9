"""The client side of secure aggregation as a pure state machine: messages in, messages out.

``SecAggClient.handle(message) -> reply`` does no I/O, starts no threads and reads no clock;
the daemon carries messages and decides deadlines. Every check that makes the protocol secure
against a malicious server runs here; any failure moves the client to ``ABORTED`` and raises
``ProtocolAbort`` (that session is dead for this client: it never answers again).

Masking (Bonawitz et al. 2017, SecAgg+ graph of Bell et al. 2020), all mod 2^ring_bits:

    y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2, v > u} PRG(s_uv) - sum_{v in N(u) ∩ U2, v < u} PRG(s_uv)

with s_uv = HKDF(X25519(s_sk_u, s_pk_v), salt=session id, info=PURPOSE_MASK || u || v).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from pydantic import ValidationError

from securefed.config import format_validation_error
from securefed.crypto.fixedpoint import encode_masked
from securefed.crypto.keys import (
    PURPOSE_MASK,
    AgreementKeyPair,
    IdentityKeyPair,
    derive_key,
    verify_signature,
    x25519_shared_secret,
)
from securefed.crypto.merkle import MerkleTree, verify_inclusion
from securefed.crypto.prg import add_masks_
from securefed.crypto.shamir import Share, split
from securefed.errors import CryptoError, InsecureParameters, InvalidInput, InvalidMessage, ProtocolAbort
from securefed.secagg.attribution import (
    encode_share_pair,
    make_complaint,
    open_share,
    seal_share,
    share_signed,
    sign_shares,
)
from securefed.secagg.messages import (
    AdvertisedKeys,
    AdvertiseKeys,
    ClientStage,
    ConsistencySignature,
    KeyBroadcast,
    MaskedInput,
    RevealedShare,
    RoundSetup,
    ShareDelivery,
    ShareKeys,
    Stage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from securefed.secagg.params import DEFAULT_MAX_COLLUDERS, SecAggParams
from securefed.secagg.session import (
    SELF_MASK_PURPOSE,
    NeighbourGraph,
    advertise_payload,
    consistency_payload,
    inbox_leaf,
    inbox_peers,
    masked_with_payload,
    plan_digest,
    session_id,
)

SECRET_SIZE = 32


class ShareKind(Enum):
    SELF_MASK = "b"  # share of b_u: revealed only for survivors
    MASK_KEY = "s_sk"  # share of s_sk_u: revealed only for dropped clients


@dataclass(frozen=True)
class ClientStats:
    """Non-secret facts about this client's round (for logs and benchmarks)."""

    clipped: int  # coordinates clipped to [-clip, clip] during encoding
    neighbours_masked: int  # pairwise masks applied (|N(u) ∩ U2|)
    upload_bytes: int  # size of the masked vector


def self_mask_key(seed: bytes, session_id: bytes, client_id: int) -> bytes:
    """The AES key of PRG(b_u): b_u through HKDF, bound to this session and client."""
    return derive_key(seed, session_id=session_id, purpose=SELF_MASK_PURPOSE, party_a=client_id, party_b=client_id)


def pairwise_mask_key(private_key: bytes, peer_public: bytes, session_id: bytes, u: int, v: int) -> bytes:
    """s_uv = HKDF(X25519(s_sk_u, s_pk_v), salt=session id, info=PURPOSE_MASK || min || max)."""
    return derive_key(x25519_shared_secret(private_key, peer_public), session_id=session_id,
                      purpose=PURPOSE_MASK, party_a=u, party_b=v)


def mask_keys(*, session_id: bytes, client_id: int, self_mask_seed: bytes, mask_private_key: bytes,
              neighbour_mask_keys: dict[int, bytes]) -> list[tuple[bytes, int]]:
    """The (AES key, sign) of every mask client u adds: its self mask (+1), then s_uv for each
    neighbour v still in the round (``neighbour_mask_keys``: v -> s_pk_v), +1 if v > u else -1."""
    keys = [(self_mask_key(self_mask_seed, session_id, client_id), +1)]
    for v in sorted(neighbour_mask_keys):
        keys.append((pairwise_mask_key(mask_private_key, neighbour_mask_keys[v], session_id, client_id, v),
                     +1 if v > client_id else -1))
    return keys


def apply_masks(acc: np.ndarray, keys: list[tuple[bytes, int]], *, workers: int | None = None) -> None:
    """In place: acc += sum(sign * PRG(key)) mod 2^bits; every mask streamed straight into ``acc``,
    block by block, on every core (``crypto.prg.add_masks_``)."""
    add_masks_(acc, keys, workers=workers)


def mask_encoded(acc: np.ndarray, *, session_id: bytes, client_id: int, self_mask_seed: bytes,
                 mask_private_key: bytes, neighbour_mask_keys: dict[int, bytes]) -> None:
    """In place: acc += PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv) (mod 2^bits)."""
    apply_masks(acc, mask_keys(session_id=session_id, client_id=client_id, self_mask_seed=self_mask_seed,
                               mask_private_key=mask_private_key, neighbour_mask_keys=neighbour_mask_keys))


def params_from_setup(msg: RoundSetup) -> SecAggParams:
    return SecAggParams(
        threshold=msg.threshold,
        neighbour_degree=msg.neighbour_degree or None,
        ring_bits=msg.ring_bits,
        frac_bits=msg.frac_bits,
        clip=msg.clip,
    )


def setup_digest(msg: RoundSetup) -> bytes:
    """Recompute the plan digest a RoundSetup should carry."""
    return plan_digest(
        round_id=msg.round_id, plan=msg.plan, model_hash=msg.model_hash, vector_length=msg.vector_length,
        threshold=msg.threshold, neighbour_degree=msg.neighbour_degree, ring_bits=msg.ring_bits,
        frac_bits=msg.frac_bits, clip=msg.clip, cohort=msg.cohort,
    )


class SecAggClient:
    """One client in one secure-aggregation session.

    >>> client = SecAggClient(client_id=7, identity=identity_key)      # doctest: +SKIP
    >>> client.set_input(update_vector)                                 # any time before ShareDelivery
    >>> reply = client.handle(round_setup)                              # -> AdvertiseKeys, and so on

    Optional ``expected`` hooks let the caller pin what it agreed to (e.g. the model hash it
    trained on): ``accept_setup(setup) -> None`` may raise ``ProtocolAbort``/``InsecureParameters``.
    ``max_colluders`` is this client's own assumption of how many members may collude with the
    server; it refuses any threshold with 2t < m + c + 1, whatever the server says.
    ``attribute``: a delivered share (signed by its sender) that does not decrypt or decode is reported
    with evidence (``MaskedInput.complaints``) and the client carries on without it; False restores the
    old behaviour of leaving the session on it (the negative control of the attribution tests).
    ``rounding_key`` (32 bytes) replaces the fresh ``secrets`` key of the stochastic rounding, so the
    encoded input (and a sum of them) repeats exactly: for reproducible simulations and known-answer
    tests only; the member daemon never sets it. Masks and keys stay fresh whatever it is.
    """

    def __init__(self, client_id: int, identity: IdentityKeyPair, *,
                 accept_setup: Callable[[RoundSetup], None] | None = None,
                 max_colluders: int = DEFAULT_MAX_COLLUDERS, attribute: bool = True,
                 rounding_key: bytes | None = None) -> None:
        if isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id < 2**63:
            raise InvalidInput(f"client_id must be an integer in [0, 2^63 - 1], got {client_id!r}")
        if not isinstance(identity, IdentityKeyPair):
            raise InvalidInput("identity must be an IdentityKeyPair")
        if isinstance(max_colluders, bool) or not isinstance(max_colluders, int) or max_colluders < 0:
            raise InvalidInput(f"max_colluders must be an integer >= 0, got {max_colluders!r}")
        if rounding_key is not None and (not isinstance(rounding_key, bytes) or len(rounding_key) != SECRET_SIZE):
            raise InvalidInput(f"rounding_key must be {SECRET_SIZE} bytes")
        self.client_id = client_id
        self._rounding_key = rounding_key
        self._identity = identity
        self._accept_setup = accept_setup
        self._max_colluders = max_colluders
        self._attribute = attribute
        self._stage = ClientStage.AWAIT_SETUP
        self._input: np.ndarray | None = None
        self._stats: ClientStats | None = None
        # Filled as the session advances.
        self._setup: RoundSetup | None = None
        self._params: SecAggParams | None = None
        self._plan_digest = b""
        self._session_id = b""
        self._identities: dict[int, bytes] = {}
        self._c_key: AgreementKeyPair | None = None
        self._s_key: AgreementKeyPair | None = None
        self._keys: dict[int, AdvertisedKeys] = {}
        self._graph: NeighbourGraph | None = None
        self._own_shares: tuple[Share, Share] | None = None  # my shares of my own b_u and s_sk_u
        self._held: dict[int, tuple[Share, Share]] = {}  # neighbour -> (share of b, share of s_sk)
        self._u2_neighbours: frozenset[int] = frozenset()  # neighbours whose shares were delivered to it
        self._signed_survivors: tuple[int, ...] | None = None
        self._signed_senders: tuple[int, ...] | None = None
        self._revealed: dict[int, ShareKind] = {}
        self._b_u = b""
        self._inbox: dict[int, AgreementKeyPair] = {}  # member -> this client's inbox key for it
        self._inbox_root = b""
        self._complained: frozenset[int] = frozenset()  # neighbours whose delivered share did not open

    # ---- public surface --------------------------------------------------------------------------

    @property
    def stage(self) -> ClientStage:
        return self._stage

    @property
    def session_id(self) -> bytes:
        """The session id (the plan digest before keys are known; b"" before the setup)."""
        return self._session_id or self._plan_digest

    @property
    def stats(self) -> ClientStats | None:
        return self._stats

    @property
    def revealed(self) -> dict[int, ShareKind]:
        """Which share of which client this client revealed (at most one kind per client)."""
        return dict(self._revealed)

    def set_input(self, values: np.ndarray) -> None:
        """The real-valued update to aggregate (encoded and masked when ShareDelivery arrives)."""
        if self._stage not in (ClientStage.AWAIT_SETUP, ClientStage.AWAIT_KEYS, ClientStage.AWAIT_SHARES):
            raise InvalidInput("the input can only be set before the masked-input stage")
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.size == 0:
            raise InvalidInput(f"input must be a non-empty 1-D vector, got shape {arr.shape}")
        if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
            raise InvalidInput("input must be a real vector with no NaN or Inf; fix the update before aggregating")
        if self._setup is not None and arr.size != self._setup.vector_length:
            raise InvalidInput(f"input has {arr.size} values but the round plan expects {self._setup.vector_length}")
        self._input = arr

    def handle(self, message: object):
        """Process one server message; return the reply. ``ProtocolAbort`` on any failed check."""
        if self._stage in (ClientStage.DONE, ClientStage.ABORTED):
            raise ProtocolAbort(f"session is over for client {self.client_id} ({self._stage.name}); no more messages accepted")
        handler = _HANDLERS.get(type(message))
        if handler is None:
            self._abort(f"unexpected message type {type(message).__name__}")
        expected = Stage(self._stage.value)
        if message.stage != expected or type(message).STAGE != expected:  # type: ignore[attr-defined]
            self._abort(f"{type(message).__name__} for stage {getattr(message, 'stage', '?')!r} while waiting for stage {expected.name}")
        try:
            message.validate()  # type: ignore[attr-defined]
        except InvalidMessage as exc:
            self._abort(f"malformed {type(message).__name__}: {exc}")
        # RoundSetup and KeyBroadcast carry ids this client recomputes in their handlers.
        if expected >= Stage.MASKED_INPUT and message.session_id != self._session_id:  # type: ignore[attr-defined]
            self._abort("message belongs to another session")
        if self._input is None and expected is Stage.MASKED_INPUT:
            # Caller error, not an attack: keep the state so the daemon can set the input and retry.
            raise InvalidInput("set_input() must be called before the masked-input stage")
        try:
            return handler(self, message)
        except ProtocolAbort:
            self._stage = ClientStage.ABORTED
            self._wipe()
            raise
        except (CryptoError, InvalidMessage, InsecureParameters) as exc:
            self._abort(str(exc))

    # ---- helpers --------------------------------------------------------------------------------

    def _abort(self, reason: str):
        self._stage = ClientStage.ABORTED
        self._wipe()
        raise ProtocolAbort(f"client {self.client_id}: {reason}")

    def _wipe(self) -> None:
        # Drop references to secrets; Python cannot zero memory, but nothing keeps them alive.
        self._c_key = self._s_key = None
        self._b_u = b""
        self._inbox = {}
        self._own_shares = None
        self._held = {}
        self._input = None

    @property
    def _t(self) -> int:
        assert self._params is not None
        return self._params.threshold

    # ---- stage handlers -------------------------------------------------------------------------

    def _on_setup(self, msg: RoundSetup) -> AdvertiseKeys:
        digest = setup_digest(msg)
        if msg.session_id != digest:
            self._abort("plan digest does not match the plan")
        mine = [m for m in msg.cohort if m.client_id == self.client_id]
        if len(mine) != 1:
            self._abort("this client is not in the cohort exactly once")
        if mine[0].identity_key != self._identity.public_bytes():
            self._abort("the cohort lists another identity key for this client")
        if len({m.identity_key for m in msg.cohort}) != len(msg.cohort):
            self._abort("two cohort members share an identity key")
        try:
            params = params_from_setup(msg)
        except ValidationError as exc:
            self._abort(f"refusing invalid parameters: {format_validation_error('round setup', exc)}")
        try:
            params.check_cohort(len(msg.cohort), max_colluders=self._max_colluders)
        except InsecureParameters as exc:
            self._abort(f"refusing insecure parameters: {exc}")
        if msg.neighbour_degree != 0 and msg.neighbour_degree >= len(msg.cohort) - 1:
            self._abort("neighbour_degree >= n - 1 must be sent as 0 (complete graph)")
        if self._input is not None and self._input.size != msg.vector_length:
            self._abort(f"plan vector_length {msg.vector_length} does not match the input ({self._input.size})")
        if self._accept_setup is not None:
            self._accept_setup(msg)
        self._setup, self._params, self._plan_digest = msg, params, digest
        self._identities = {m.client_id: m.identity_key for m in msg.cohort}
        self._c_key, self._s_key = AgreementKeyPair.generate(), AgreementKeyPair.generate()
        c_pk, s_pk = self._c_key.public_bytes(), self._s_key.public_bytes()
        peers = inbox_peers(self._identities, self.client_id)
        self._inbox = {v: AgreementKeyPair.generate() for v in peers}
        inbox = tuple(self._inbox[v].public_bytes() for v in peers)
        self._inbox_root = MerkleTree([inbox_leaf(v, k) for v, k in zip(peers, inbox)]).root if peers else bytes(32)
        sig = self._identity.sign(advertise_payload(digest, self.client_id, c_pk, s_pk, self._inbox_root))
        self._stage = ClientStage.AWAIT_KEYS
        return AdvertiseKeys(digest, Stage.ADVERTISE_KEYS, self.client_id, c_pk, s_pk, sig, self._inbox_root, inbox)

    def _on_keys(self, msg: KeyBroadcast) -> ShareKeys:
        assert self._c_key is not None and self._s_key is not None and self._params is not None
        mine = [k for k in msg.keys if k.client_id == self.client_id]
        if len(mine) != 1:
            self._abort("own keys are missing from (or repeated in) the key broadcast")
        if (mine[0].c_pk != self._c_key.public_bytes() or mine[0].s_pk != self._s_key.public_bytes()
                or mine[0].inbox_root != self._inbox_root):
            self._abort("the key broadcast carries other keys for this client")
        all_pks = [k.c_pk for k in msg.keys] + [k.s_pk for k in msg.keys]
        if len(set(all_pks)) != len(all_pks):
            # A repeated key would make two pairwise masks equal (or cancel) and leak inputs.
            self._abort("duplicate public keys in the key broadcast")
        for k in msg.keys:
            if k.client_id not in self._identities:
                self._abort(f"key broadcast lists client {k.client_id}, who is not in the cohort")
            try:
                verify_signature(self._identities[k.client_id], k.signature,
                                 advertise_payload(self._plan_digest, k.client_id, k.c_pk, k.s_pk, k.inbox_root))
            except CryptoError:
                self._abort("a key signature does not verify")
        sid = session_id(self._plan_digest, msg.keys)
        if msg.session_id != sid:
            self._abort("session id does not match the plan and keys")
        n1 = len(msg.keys)
        if n1 < self._t:
            self._abort(f"only {n1} clients advertised keys, fewer than the threshold {self._t}")
        graph = NeighbourGraph.build(sid, [k.client_id for k in msg.keys], self._params.effective_degree(n1))
        holders = graph.holders(self.client_id)
        if len(holders) < self._t:
            self._abort(f"only {len(holders)} share holders, fewer than the threshold {self._t}")
        self._session_id, self._graph = sid, graph
        self._keys = {k.client_id: k for k in msg.keys}
        their_inbox = self._check_inbox_keys(msg, graph)
        # Only the inbox keys of neighbours can ever receive a share; the others are never needed.
        self._inbox = {v: kp for v, kp in self._inbox.items() if v in graph.of(self.client_id)}

        b_u = secrets.token_bytes(SECRET_SIZE)
        self._b_u = b_u
        b_shares = split(b_u, len(holders), self._t)
        s_shares = split(self._s_key.private_bytes(), len(holders), self._t)
        out = []
        for i, v in enumerate(holders):
            if v == self.client_id:
                self._own_shares = (b_shares[i], s_shares[i])
                continue
            out.append(seal_share(encode_share_pair(b_shares[i], s_shares[i]), c_key=self._c_key, session_id=sid,
                                  sender=self.client_id, receiver=v, inbox_key=their_inbox[v]))
        # One signature over all of them (a Merkle root): it makes any of them that does not open its fault.
        sig = sign_shares(out, identity=self._identity, sender_c_pk=self._c_key.public_bytes(), session_id=sid,
                          sender=self.client_id, inbox={v: (their_inbox[v], self._keys[v].inbox_root) for v in their_inbox})
        self._stage = ClientStage.AWAIT_SHARES
        return ShareKeys(sid, Stage.SHARE_KEYS, self.client_id, tuple(out), sig)

    def _check_inbox_keys(self, msg: KeyBroadcast, graph: NeighbourGraph) -> dict[int, bytes]:
        """Each neighbour's inbox key for this client, proven under that neighbour's signed root (the
        session id binds the roots). A key the server made up would let it read the shares."""
        me = self.client_id
        got = {k.owner: k for k in msg.inbox_keys}
        if set(got) != set(graph.of(me)):
            self._abort("the key broadcast does not carry exactly the neighbours' inbox keys for this client")
        out = {}
        for v, k in got.items():
            peers = inbox_peers(self._identities, v)
            if not verify_inclusion(self._keys[v].inbox_root, inbox_leaf(me, k.key), peers.index(me), len(peers),
                                    k.proof):
                self._abort(f"the inbox key of client {v} for this client is not under its signed root")
            out[v] = k.key
        return out

    def _on_shares(self, msg: ShareDelivery) -> MaskedInput:
        assert self._graph is not None and self._c_key is not None and self._s_key is not None
        assert self._params is not None and self._setup is not None and self._input is not None
        if msg.recipient != self.client_id:
            self._abort("share delivery addressed to another client")
        me, sid = self.client_id, self._session_id
        neighbours = self._graph.of(me)
        held: dict[int, tuple[Share, Share]] = {}
        complaints = []
        for s in msg.shares:
            if s.receiver != me:
                self._abort("a delivered share is addressed to another client")
            if s.sender not in neighbours:
                self._abort(f"a delivered share comes from client {s.sender}, who is not a neighbour")
            inbox = self._inbox[s.sender]
            try:
                # A share that opens is authentic: only its sender and this client can derive its key.
                held[s.sender] = open_share(s, inbox_private=inbox.private_bytes(), sender_c_pk=self._keys[s.sender].c_pk,
                                            session_id=sid, expected_x=self._graph.share_x(s.sender, me))
                continue
            except CryptoError as exc:
                failure = str(exc)
            receivers = sorted(self._graph.of(s.sender))
            if not share_signed(s, sender_identity=self._identities[s.sender], session_id=sid,
                                sender_c_pk=self._keys[s.sender].c_pk, inbox_key=inbox.public_bytes(),
                                inbox_root=self._inbox_root, index=receivers.index(me), count=len(receivers)):
                # The server checks every sender's signature on receipt: an unsigned share was altered by it.
                self._abort(f"the share from client {s.sender} does not carry its signature")
            if not self._attribute:
                self._abort(f"an encrypted share failed to decrypt or decode: {failure}")
            # Its sender signed it: report it with the one key that opens it, and carry on without it.
            complaints.append(make_complaint(s, identity=self._identity, inbox_private=inbox.private_bytes(),
                                             session_id=sid))
        u2 = frozenset(s.sender for s in msg.shares)
        alive_holders = len(u2) + 1
        if alive_holders < self._t:
            self._abort(f"only {alive_holders} of this client's share holders are still in the round, fewer than the threshold {self._t}")

        # Encoding, stochastic rounding and every mask in one pass over memory (crypto.fixedpoint).
        masks = mask_keys(session_id=sid, client_id=me, self_mask_seed=self._b_u,
                          mask_private_key=self._s_key.private_bytes(),
                          neighbour_mask_keys={v: self._keys[v].s_pk for v in u2})
        acc, clipped = encode_masked(self._input, self._params.fixed_point(), masks, rounding_key=self._rounding_key)
        self._held, self._u2_neighbours = held, u2
        self._complained = frozenset(c.accused for c in complaints)
        self._input = None  # the plaintext update is not needed any more
        self._b_u = b""
        self._s_key = None
        self._c_key = None
        self._inbox = {}
        self._stats = ClientStats(clipped=clipped, neighbours_masked=len(u2), upload_bytes=int(acc.nbytes))
        self._stage = ClientStage.AWAIT_SURVIVORS
        # Binds whom this client masked with: a holder that is not listed never reveals its self-mask share.
        sig = self._identity.sign(masked_with_payload(sid, me, tuple(sorted(u2))))
        return MaskedInput(sid, Stage.MASKED_INPUT, me, acc, sig, tuple(sorted(complaints, key=lambda c: c.accused)))

    def _on_survivors(self, msg: SurvivorList) -> ConsistencySignature:
        self._check_survivor_view(msg)
        self._signed_survivors, self._signed_senders = msg.survivors, msg.share_senders
        sig = self._identity.sign(consistency_payload(self._session_id, msg.share_senders, msg.survivors))
        self._stage = ClientStage.AWAIT_UNMASK
        return ConsistencySignature(self._session_id, Stage.CONSISTENCY, self.client_id, sig)

    def _check_survivor_view(self, msg: SurvivorList) -> None:
        """Before signing: U3 and U2 agree with every set this client acted on, and each surviving
        neighbour masked with this client (its signed masked-with list names it)."""
        assert self._graph is not None
        me, graph = self.client_id, self._graph
        survivors, senders = set(msg.survivors), set(msg.share_senders)
        if me not in survivors:
            self._abort("the survivor list omits this client, which sent its masked input")
        if not survivors <= senders or not senders <= set(self._keys):
            self._abort("the survivor list names clients that never sent shares or never advertised keys")
        if len(survivors) < self._t:
            self._abort(f"only {len(survivors)} survivors, fewer than the threshold {self._t}")
        if (senders & graph.of(me)) != self._u2_neighbours:
            # Shares withheld from this client (or a sender made up): it masked with another set.
            self._abort("the share senders listed disagree with the shares this client received")
        attested = {m.client_id: m.signature for m in msg.masked_with}
        for u in sorted(survivors & graph.of(me)):
            if u not in attested:
                self._abort(f"no masked-with signature from surviving neighbour {u}")
            partners = tuple(sorted(senders & graph.of(u)))
            try:
                verify_signature(self._identities[u], attested[u], masked_with_payload(self._session_id, u, partners))
            except CryptoError:
                # u received shares from another set than the listed U2: the server withheld some from
                # it (e.g. this client's), so u's input is not masked with the partners that reveal for it.
                self._abort(f"surviving neighbour {u} did not mask with the listed share senders")

    def _on_unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        assert self._graph is not None and self._own_shares is not None
        me, graph = self.client_id, self._graph
        assert self._signed_senders is not None
        if msg.survivors != self._signed_survivors:
            self._abort("the unmask request carries another survivor list than the one this client signed")
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        if survivors & dropped:
            self._abort(f"client {min(survivors & dropped)} is listed both as survivor and as dropped")
        if dropped != set(self._signed_senders) - survivors:
            self._abort("the dropped list is not the share senders this client signed minus the survivors")
        neighbours = graph.of(me)
        for v in neighbours:
            in_u2 = v in self._u2_neighbours
            listed = v in survivors or v in dropped
            if in_u2 != listed:
                self._abort(f"neighbour {v}'s status disagrees with the shares this client received")
        # Consistency check: every signature must verify over the list this client signed, and
        # each client whose share this client reveals needs >= t signers among its holders (so two
        # different lists can never both gather a majority of one client's holders).
        payload = consistency_payload(self._session_id, self._signed_senders, msg.survivors)
        signers = set()
        for s in msg.signatures:
            if s.client_id not in survivors:
                self._abort(f"consistency signature from client {s.client_id}, who is not a survivor")
            try:
                verify_signature(self._identities[s.client_id], s.signature, payload)
            except CryptoError:
                self._abort("a consistency signature does not verify")
            signers.add(s.client_id)
        if me not in signers:
            self._abort("this client's own consistency signature is missing")
        owners = sorted(set(self._held) | {me})  # not those whose share did not open: it holds none of theirs
        for owner in owners:
            got = len(signers.intersection(graph.holders(owner)))
            if got < self._t:
                self._abort(f"only {got} consistency signatures among the share holders of client {owner}, fewer than the threshold {self._t}")

        b_out, s_out = [], []
        for owner in owners:
            b_share, s_share = self._own_shares if owner == me else self._held[owner]
            kind = ShareKind.SELF_MASK if owner in survivors else ShareKind.MASK_KEY
            if self._revealed.get(owner, kind) is not kind:
                self._abort(f"refusing to reveal both shares of client {owner}")
            self._revealed[owner] = kind
            if kind is ShareKind.SELF_MASK:
                b_out.append(RevealedShare(owner, b_share.to_bytes()))
            else:
                s_out.append(RevealedShare(owner, s_share.to_bytes()))
        self._stage = ClientStage.DONE
        self._wipe()
        return UnmaskResponse(self._session_id, Stage.UNMASK, me, tuple(b_out), tuple(s_out))


_HANDLERS: dict[type, Callable] = {
    RoundSetup: SecAggClient._on_setup,
    KeyBroadcast: SecAggClient._on_keys,
    ShareDelivery: SecAggClient._on_shares,
    SurvivorList: SecAggClient._on_survivors,
    UnmaskRequest: SecAggClient._on_unmask,
}
