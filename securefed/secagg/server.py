"""The server side of secure aggregation as a pure state machine.

The daemon feeds it client messages (``receive``) and, at each stage's deadline (or once
``pending()`` is empty), calls ``close_stage()``, which declares the silent clients dropped and
returns the next server messages keyed by recipient. No I/O, no threads, no clock.

A bad message from one client is refused with ``InvalidMessage`` and leaves the round as it
was (that client simply counts as dropped when the stage closes): one client must not be able
to abort everyone's round. ``ProtocolAbort`` is raised when the round itself cannot finish
(too few clients or shares left); then no aggregate is ever released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from securefed.crypto.fixedpoint import decode_sum
from securefed.crypto.keys import AgreementKeyPair, is_low_order, verify_signature
from securefed.crypto.merkle import MerkleTree
from securefed.crypto.prg import add_masks_, ring_dtype
from securefed.crypto.shamir import Share, combine
from securefed.errors import CryptoError, InvalidInput, InvalidMessage, ProtocolAbort
from securefed.secagg import attribution
from securefed.secagg.attribution import Fault, Verdict
from securefed.secagg.client import SECRET_SIZE, pairwise_mask_key, self_mask_key
from securefed.secagg.messages import (
    AdvertisedKeys,
    AdvertiseKeys,
    CohortMember,
    ConsistencySignature,
    EncryptedShare,
    InboxKey,
    KeyBroadcast,
    MaskedInput,
    MaskedWith,
    RoundSetup,
    ServerStage,
    ShareDelivery,
    ShareKeys,
    SignedSurvivors,
    Stage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from securefed.secagg.params import DEFAULT_MAX_COLLUDERS, SecAggParams
from securefed.secagg.session import (
    NeighbourGraph,
    advertise_payload,
    consistency_payload,
    inbox_leaf,
    inbox_peers,
    masked_with_payload,
    plan_digest,
    session_id,
    shares_payload,
)


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The unmasked sum: exact in the ring, and decoded to floats."""

    ring_sum: np.ndarray = field(repr=False)  # uint32/uint64: sum of the encoded inputs of ``survivors``
    values: np.ndarray = field(repr=False)  # float64 decode of ring_sum
    survivors: tuple[int, ...]  # U3: exactly the clients whose inputs are in the sum
    dropouts: Mapping[int, Stage]  # cohort members left out, with the stage they failed to answer
    session_id: bytes

    @property
    def n_summed(self) -> int:
        return len(self.survivors)


class SecAggServer:
    """The aggregator for one round. See the module docstring for the calling pattern."""

    def __init__(self, params: SecAggParams, *, round_id: int, vector_length: int,
                 cohort: Mapping[int, bytes] | Iterable[CohortMember], plan: bytes = b"",
                 model_hash: bytes = bytes(32), max_colluders: int = DEFAULT_MAX_COLLUDERS) -> None:
        if not isinstance(params, SecAggParams):
            raise InvalidInput("params must be SecAggParams")
        members = (tuple(CohortMember(cid, key) for cid, key in cohort.items()) if isinstance(cohort, Mapping)
                   else tuple(cohort))
        members = tuple(sorted(members, key=lambda m: m.client_id))
        n = len(members)
        params.check_cohort(n, max_colluders=max_colluders)
        k = params.effective_degree(n)
        setup = RoundSetup(
            session_id=bytes(32), stage=Stage.ADVERTISE_KEYS, round_id=round_id, plan=plan, model_hash=model_hash,
            vector_length=vector_length, threshold=params.threshold, neighbour_degree=0 if k == n - 1 else k,
            ring_bits=params.ring_bits, frac_bits=params.frac_bits, clip=float(params.clip), cohort=members,
        )
        try:
            setup.validate()
        except InvalidMessage as exc:
            raise InvalidInput(f"round setup: {exc}") from None
        if len({m.identity_key for m in members}) != n:
            raise InvalidInput("two cohort members share an identity key; each client needs its own")
        digest = plan_digest(round_id=round_id, plan=plan, model_hash=model_hash, vector_length=vector_length,
                             threshold=setup.threshold, neighbour_degree=setup.neighbour_degree,
                             ring_bits=setup.ring_bits, frac_bits=setup.frac_bits, clip=setup.clip, cohort=members)
        self._setup = RoundSetup(**{**setup.__dict__, "session_id": digest})
        self.params = params
        self._fp = params.fixed_point()
        self._t = params.threshold
        self._d = vector_length
        self._dtype = ring_dtype(params.ring_bits)
        self._identities = {m.client_id: m.identity_key for m in members}
        self._plan_digest = digest
        self._session_id = b""
        self._stage = ServerStage.COLLECT_KEYS
        self._expected: frozenset[int] = frozenset(self._identities)
        self._received: dict[int, object] = {}
        self._dropouts: dict[int, Stage] = {}
        self._keys: dict[int, AdvertisedKeys] = {}
        self._graph: NeighbourGraph | None = None
        self._shares: dict[int, ShareKeys] = {}
        self._u2: frozenset[int] = frozenset()
        self._u2_sorted: tuple[int, ...] = ()
        self._delivered: dict[int, tuple[int, ...]] = {}  # recipient -> senders of the shares delivered to it
        self._masked_with: dict[int, bytes] = {}  # survivor -> its masked-with signature
        self._u3: tuple[int, ...] = ()
        self._u3_set: frozenset[int] = frozenset()
        self._signatures: dict[int, SignedSurvivors] = {}
        self._b_shares: dict[int, list[Share]] = {}
        self._s_shares: dict[int, list[Share]] = {}
        self._sum: np.ndarray | None = None
        self._result: AggregateResult | None = None
        # Attribution (secagg.attribution): inbox keys and their trees per member, the shares delivered
        # (recipient -> sender -> share) until the masked inputs are in, and the verdicts on complaints.
        self._inbox: dict[int, tuple[bytes, ...]] = {}
        self._positions = {cid: i for i, cid in enumerate(sorted(self._identities))}
        self._trees: dict[int, MerkleTree] = {}
        self._delivered_shares: dict[int, dict[int, EncryptedShare]] = {}
        self._verdicts: list[Verdict] = []
        self._culprits: dict[int, Verdict] = {}
        self._no_share: set[tuple[int, int]] = set()  # (holder, owner): the owner's share did not open for it

    # ---- public surface --------------------------------------------------------------------------

    @property
    def stage(self) -> ServerStage:
        return self._stage

    @property
    def plan_digest(self) -> bytes:
        return self._plan_digest

    @property
    def session_id(self) -> bytes:
        """The full session id once keys are collected (b"" before)."""
        return self._session_id

    @property
    def dropouts(self) -> dict[int, Stage]:
        """Clients declared dropped so far, with the stage whose message they did not send."""
        return dict(self._dropouts)

    @property
    def graph(self) -> NeighbourGraph | None:
        return self._graph

    @property
    def culprits(self) -> dict[int, Verdict]:
        """Members proven to have broken the protocol (garbage shares, a false accusation), with the
        first verdict against each; they take no further part in this session."""
        return dict(self._culprits)

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return tuple(self._verdicts)

    @property
    def result(self) -> AggregateResult:
        if self._result is None:
            raise ProtocolAbort("no aggregate: the round has not completed")
        return self._result

    def start(self) -> dict[int, RoundSetup]:
        """The RoundSetup for every cohort member (the same message for all)."""
        if self._stage is not ServerStage.COLLECT_KEYS:
            raise ProtocolAbort("the round has already started")
        return {cid: self._setup for cid in self._identities}

    def pending(self) -> frozenset[int]:
        """Clients expected to answer the current stage that have not (yet)."""
        if self._stage in (ServerStage.DONE, ServerStage.ABORTED):
            return frozenset()
        return self._expected - self._received.keys()

    def receive(self, message: object) -> None:
        """Accept one client message for the current stage, or refuse it with ``InvalidMessage``."""
        if self._stage in (ServerStage.DONE, ServerStage.ABORTED):
            raise InvalidMessage(f"round is over ({self._stage.name}); message refused")
        handler = _HANDLERS.get(type(message))
        if handler is None:
            raise InvalidMessage(f"unexpected message type {type(message).__name__}")
        expected = Stage(self._stage.value)
        if message.stage != expected or type(message).STAGE != expected:  # type: ignore[attr-defined]
            late = isinstance(message.stage, Stage) and message.stage < expected  # type: ignore[attr-defined]
            raise InvalidMessage(f"{type(message).__name__} for stage {message.stage!r} refused while collecting "  # type: ignore[attr-defined]
                                 f"{expected.name}" + (" (too late: the stage is closed)" if late else ""))
        message.validate()  # type: ignore[attr-defined]
        want = self._plan_digest if expected is Stage.ADVERTISE_KEYS else self._session_id
        if message.session_id != want:  # type: ignore[attr-defined]
            raise InvalidMessage("message belongs to another session")
        cid = message.client_id  # type: ignore[attr-defined]
        if cid not in self._expected:
            why = f"dropped at {self._dropouts[cid].name}" if cid in self._dropouts else "not expected at this stage"
            raise InvalidMessage(f"message from client {cid} refused: {why}")
        if cid in self._received:
            raise InvalidMessage(f"client {cid} already answered this stage")
        handler(self, message)
        self._received[cid] = True

    def close_stage(self) -> dict[int, object]:
        """End the current stage: silent clients are dropped; return the next messages by recipient.

        After the UNMASK stage this unmasks the sum (see ``result``) and returns ``{}``.
        ``ProtocolAbort`` (and the ABORTED state) when the round can no longer succeed.
        """
        if self._stage in (ServerStage.DONE, ServerStage.ABORTED):
            raise ProtocolAbort(f"round is over ({self._stage.name})")
        stage = Stage(self._stage.value)
        answered = frozenset(self._received)
        for cid in self._expected - answered:
            self._dropouts[cid] = stage
        if len(answered) < self._t:
            self._abort(f"only {len(answered)} clients answered stage {stage.name}, fewer than the threshold {self._t}")
        try:
            out = _CLOSERS[stage](self, answered)
        except ProtocolAbort:
            self._stage = ServerStage.ABORTED
            self._sum = None
            raise
        self._expected = frozenset(out) if self._stage is not ServerStage.DONE else frozenset()
        self._received = {}
        return out

    # ---- helpers --------------------------------------------------------------------------------

    def _abort(self, reason: str):
        self._stage = ServerStage.ABORTED
        self._sum = None
        raise ProtocolAbort(f"round aborted, no aggregate released: {reason}{self._culprit_note()}")

    def _culprit_note(self) -> str:
        if not self._culprits:
            return ""
        return "; proven culprit(s): " + "; ".join(attribution.describe(v) for _, v in sorted(self._culprits.items()))

    def _needed(self, u3: Iterable[int]) -> frozenset[int]:
        """Clients whose secret must be rebuilt: survivors (b_u), dropped-after-sharing ones with a surviving neighbour (s_sk)."""
        assert self._graph is not None
        u3 = frozenset(u3)
        return u3 | frozenset(u for u in self._u2 - u3 if self._graph.of(u) & u3)

    def _check_holders(self, owners: Iterable[int], alive: frozenset[int], stage: Stage) -> None:
        assert self._graph is not None
        for u in sorted(owners):
            # A holder whose share of u did not open (it complained, rightly) has nothing to reveal for u.
            have = sum(1 for h in alive.intersection(self._graph.holders(u)) if (h, u) not in self._no_share)
            if have < self._t:
                self._abort(f"after stage {stage.name} only {have} share holders of client {u} remain, fewer than the threshold {self._t}")

    # ---- receive handlers (check, then store) ------------------------------------------------------

    def _recv_keys(self, msg: AdvertiseKeys) -> None:
        peers = inbox_peers(self._identities, msg.client_id)
        if len(msg.inbox_keys) != len(peers):
            raise InvalidMessage(f"client {msg.client_id}: {len(msg.inbox_keys)} inbox keys, the cohort needs {len(peers)}")
        if any(is_low_order(k) for k in msg.inbox_keys):
            raise InvalidMessage(f"client {msg.client_id}: an inbox key is a low-order point")
        tree = MerkleTree([inbox_leaf(v, k) for v, k in zip(peers, msg.inbox_keys)])
        if tree.root != msg.inbox_root:
            raise InvalidMessage(f"client {msg.client_id}: inbox keys do not match the inbox root")
        try:
            verify_signature(self._identities[msg.client_id], msg.signature,
                             advertise_payload(self._plan_digest, msg.client_id, msg.c_pk, msg.s_pk, msg.inbox_root))
        except CryptoError:
            raise InvalidMessage(f"client {msg.client_id}: key signature does not verify") from None
        if msg.c_pk == msg.s_pk:
            raise InvalidMessage(f"client {msg.client_id}: c_pk and s_pk must differ")
        seen = {pk for k in self._keys.values() for pk in (k.c_pk, k.s_pk)}
        if msg.c_pk in seen or msg.s_pk in seen:
            raise InvalidMessage(f"client {msg.client_id}: public key already used by another client")
        self._keys[msg.client_id] = msg.keys()
        self._inbox[msg.client_id], self._trees[msg.client_id] = tuple(msg.inbox_keys), tree

    def _inbox_index(self, owner: int, peer: int) -> int:
        """Where ``peer`` sits among ``owner``'s inbox keys (every other cohort member, by id)."""
        pos = self._positions
        return pos[peer] - (1 if pos[peer] > pos[owner] else 0)

    def _inbox_key(self, owner: int, peer: int) -> bytes:
        """``owner``'s committed inbox key for ``peer``."""
        return self._inbox[owner][self._inbox_index(owner, peer)]

    def _recv_shares(self, msg: ShareKeys) -> None:
        assert self._graph is not None
        cid = msg.client_id
        if {s.receiver for s in msg.shares} != self._graph.of(cid):
            raise InvalidMessage(f"client {cid}: shares must go to exactly its neighbours")
        shares = tuple(sorted(msg.shares, key=lambda s: s.receiver))
        # Checked here so that what reaches a member is what its sender signed: a share that then does not
        # open is its sender's fault, provably (secagg.attribution). Each share goes out with its proof.
        tree = attribution.share_tree(shares, sender_c_pk=self._keys[cid].c_pk, inbox={
            s.receiver: (self._inbox_key(s.receiver, cid), self._keys[s.receiver].inbox_root) for s in shares})
        try:
            verify_signature(self._identities[cid], msg.signature, shares_payload(self._session_id, cid, tree.root))
        except CryptoError:
            raise InvalidMessage(f"client {cid}: its shares are not signed by it") from None
        self._shares[cid] = ShareKeys(msg.session_id, msg.stage, cid, tuple(
            EncryptedShare(s.sender, s.receiver, s.ciphertext, msg.signature, tree.proof(i)) for i, s in enumerate(shares)))

    def _recv_masked(self, msg: MaskedInput) -> None:
        cid = msg.client_id
        if cid in self._culprits:
            raise InvalidMessage(f"masked input refused: {attribution.describe(self._culprits[cid])}")
        if msg.masked.dtype != self._dtype or msg.masked.shape != (self._d,):
            raise InvalidMessage(f"client {cid}: masked input must be {self._dtype} of length {self._d}")
        try:
            verify_signature(self._identities[cid], msg.signature,
                             masked_with_payload(self._session_id, cid, self._delivered[cid]))
        except CryptoError:
            raise InvalidMessage(f"client {cid}: masked-with signature does not verify over the shares "
                                 "delivered to it") from None
        self._take_complaints(msg)
        self._masked_with[cid] = msg.signature
        if self._sum is None:
            self._sum = np.zeros(self._d, dtype=self._dtype)
        np.add(self._sum, msg.masked, out=self._sum)  # unsigned wrap-around = addition mod 2^bits

    def _take_complaints(self, msg: MaskedInput) -> None:
        """Judge every complaint first; a false one refuses the complainer's input (it is the culprit),
        right ones mark the accused and the share the complainer cannot reveal."""
        assert self._graph is not None
        cid, verdicts = msg.client_id, []
        for c in msg.complaints:
            share = self._delivered_shares.get(cid, {}).get(c.accused)
            if share is None:
                raise InvalidMessage(f"client {cid}: complaint about client {c.accused}, whose share it was not given")
            ctx = attribution.Context(
                session_id=self._session_id, complainer_identity=self._identities[cid],
                accused_identity=self._identities[c.accused], accused_c_pk=self._keys[c.accused].c_pk,
                inbox_key=self._inbox_key(cid, c.accused), inbox_root=self._keys[cid].inbox_root,
                expected_x=self._graph.share_x(c.accused, cid),
                share_index=sorted(self._graph.of(c.accused)).index(cid), share_count=len(self._graph.of(c.accused)))
            try:
                verdicts.append(attribution.judge(c, cid, ctx))
            except CryptoError:
                raise InvalidMessage(f"client {cid}: a complaint it did not sign") from None
        self._verdicts += verdicts
        false = [v for v in verdicts if v.fault is Fault.COMPLAINER]
        if false:
            self._culprits.setdefault(cid, false[0])
            raise InvalidMessage(attribution.describe(false[0]))
        for v in verdicts:
            self._no_share.add((cid, v.accused))
            self._culprits.setdefault(v.accused, v)

    def _recv_signature(self, msg: ConsistencySignature) -> None:
        try:
            verify_signature(self._identities[msg.client_id], msg.signature,
                             consistency_payload(self._session_id, self._u2_sorted, self._u3))
        except CryptoError:
            raise InvalidMessage(f"client {msg.client_id}: consistency signature does not verify") from None
        self._signatures[msg.client_id] = SignedSurvivors(msg.client_id, msg.signature)

    def _recv_unmask(self, msg: UnmaskResponse) -> None:
        assert self._graph is not None
        cid, u3 = msg.client_id, self._u3_set
        parsed: list[tuple[int, Share, bool]] = []
        for shares, is_b in ((msg.self_mask_shares, True), (msg.key_shares, False)):
            for r in shares:
                if not self._graph.holds(cid, r.owner) or (cid, r.owner) in self._no_share:
                    raise InvalidMessage(f"client {cid} holds no share of client {r.owner}")
                if is_b != (r.owner in u3) or r.owner not in self._u2:
                    raise InvalidMessage(f"client {cid}: wrong kind of share for client {r.owner}")
                try:
                    share = Share.from_bytes(r.share)
                except CryptoError:
                    raise InvalidMessage(f"client {cid}: malformed share of client {r.owner}") from None
                if share.x != self._graph.share_x(r.owner, cid):
                    raise InvalidMessage(f"client {cid}: share of client {r.owner} has the wrong x-coordinate")
                parsed.append((r.owner, share, is_b))
        for owner, share, is_b in parsed:
            (self._b_shares if is_b else self._s_shares).setdefault(owner, []).append(share)

    # ---- stage closers -----------------------------------------------------------------------------

    def _close_keys(self, u1: frozenset[int]) -> dict[int, object]:
        keys = tuple(self._keys[c] for c in sorted(u1))
        self._session_id = session_id(self._plan_digest, keys)
        self._graph = NeighbourGraph.build(self._session_id, sorted(u1), self.params.effective_degree(len(u1)))
        self._check_holders(u1, u1, Stage.ADVERTISE_KEYS)
        self._stage = ServerStage.COLLECT_SHARES
        graph = self._graph
        # Each member gets its neighbours' inbox keys for it, each with its proof under the signed root.
        return {c: KeyBroadcast(self._session_id, Stage.SHARE_KEYS, keys, tuple(
                    InboxKey(v, self._inbox_key(v, c), self._trees[v].proof(self._inbox_index(v, c)))
                    for v in sorted(graph.of(c))))
                for c in sorted(u1)}

    def _close_shares(self, u2: frozenset[int]) -> dict[int, object]:
        self._u2, self._u2_sorted = u2, tuple(sorted(u2))
        self._check_holders(u2, u2, Stage.SHARE_KEYS)
        inbox: dict[int, list] = {v: [] for v in u2}
        for u in sorted(u2):
            for s in self._shares[u].shares:
                if s.receiver in inbox:
                    inbox[s.receiver].append(s)
        self._shares = {}
        self._delivered = {v: tuple(s.sender for s in inbox[v]) for v in u2}
        self._delivered_shares = {v: {s.sender: s for s in inbox[v]} for v in u2}
        self._stage = ServerStage.COLLECT_MASKED_INPUTS
        return {v: ShareDelivery(self._session_id, Stage.MASKED_INPUT, v, tuple(inbox[v])) for v in sorted(u2)}

    def _close_masked(self, u3: frozenset[int]) -> dict[int, object]:
        self._u3 = tuple(sorted(u3))
        self._u3_set = u3
        self._delivered_shares = {}
        # A proven culprit whose input is already in the sum stays in U3 (its self mask must come off) but
        # takes no further part: it is asked for nothing, like a client that dropped after its input.
        excluded = frozenset(self._culprits) & u3
        for c in excluded:
            self._dropouts[c] = Stage.CONSISTENCY
        self._check_holders(self._needed(u3), u3 - excluded, Stage.MASKED_INPUT)
        self._stage = ServerStage.COLLECT_SIGNATURES
        assert self._graph is not None
        out: dict[int, object] = {}
        for c in sorted(u3 - excluded):
            # Each survivor checks that its surviving neighbours masked with it before it signs.
            attested = tuple(MaskedWith(u, self._masked_with[u]) for u in sorted(u3 & self._graph.of(c)))
            out[c] = SurvivorList(self._session_id, Stage.CONSISTENCY, self._u3, self._u2_sorted, attested)
        return out

    def _close_signatures(self, u4: frozenset[int]) -> dict[int, object]:
        self._check_holders(self._needed(self._u3_set), u4, Stage.CONSISTENCY)
        dropped = tuple(sorted(self._u2 - self._u3_set))
        sigs = tuple(self._signatures[c] for c in sorted(u4))
        self._stage = ServerStage.COLLECT_UNMASK_SHARES
        msg = UnmaskRequest(self._session_id, Stage.UNMASK, self._u3, dropped, sigs)
        return {c: msg for c in sorted(u4)}

    def _close_unmask(self, u5: frozenset[int]) -> dict[int, object]:
        assert self._graph is not None and self._sum is not None
        u3 = self._u3_set
        needed = self._needed(u3)
        self._check_holders(needed, u5, Stage.UNMASK)
        secrets_: dict[int, bytes] = {}
        for u in sorted(needed):
            shares = (self._b_shares if u in u3 else self._s_shares).get(u, [])
            # One share beyond t (when there is one) lets combine() detect an inconsistent share. The
            # lowest x-coordinates first: owners whose shares sit at the same coordinates then share
            # one set of (cached) Lagrange weights.
            try:
                secrets_[u] = combine(sorted(shares, key=lambda s: s.x)[: self._t + 1], self._t, SECRET_SIZE)
            except CryptoError as exc:
                self._abort(f"cannot rebuild the secret of client {u}: {exc}")
        for u in sorted(needed - u3):
            if AgreementKeyPair.from_private_bytes(secrets_[u]).public_bytes() != self._keys[u].s_pk:
                self._abort(f"the rebuilt mask key of dropped client {u} does not match its public key")
        total = self._sum
        sid = self._session_id
        masks = [(self_mask_key(secrets_[u], sid, u), -1) for u in self._u3]
        for u in sorted(needed - u3):
            s_sk = secrets_[u]
            # v added +PRG(s_uv) if u > v, else -PRG(s_uv): take it back out.
            masks += [(pairwise_mask_key(s_sk, self._keys[v].s_pk, sid, u, v), -1 if u > v else +1)
                      for v in sorted(self._graph.of(u) & u3)]
        # Each mask is expanded exactly once, straight into the running sum, on every core.
        add_masks_(total, masks)
        self._sum = None
        values = decode_sum(total, self._fp, len(self._u3))
        self._result = AggregateResult(total, values, self._u3, dict(self._dropouts), sid)
        self._stage = ServerStage.DONE
        return {}


_HANDLERS = {
    AdvertiseKeys: SecAggServer._recv_keys,
    ShareKeys: SecAggServer._recv_shares,
    MaskedInput: SecAggServer._recv_masked,
    ConsistencySignature: SecAggServer._recv_signature,
    UnmaskResponse: SecAggServer._recv_unmask,
}
_CLOSERS = {
    Stage.ADVERTISE_KEYS: SecAggServer._close_keys,
    Stage.SHARE_KEYS: SecAggServer._close_shares,
    Stage.MASKED_INPUT: SecAggServer._close_masked,
    Stage.CONSISTENCY: SecAggServer._close_signatures,
    Stage.UNMASK: SecAggServer._close_unmask,
}
