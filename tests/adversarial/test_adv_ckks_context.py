"""CKKS: the server's context must hold no secret key; decoders of contexts/ciphertexts must not crash.

The first tests pin down the TenSEAL behaviour the design relies on (a context serialised without its
secret key cannot decrypt); the securefed.he tests below them drive the real wrapper.
"""

from __future__ import annotations

import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st


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


# ---- the securefed.he wrapper under a malicious server or a bad provisioning -----------------------

import numpy as np  # noqa: E402

from securefed import he  # noqa: E402
from securefed.errors import CryptoError, InvalidMessage, ProtocolAbort, SecureFedError  # noqa: E402


@pytest.fixture(scope="module")
def federation():
    params = he.get_params(he.DEFAULT_PARAMS_NAME)
    members = he.generate_client_context(params)
    return params, members, he.ServerContext.from_public_bytes(members.public_bytes(), params)


@pytest.mark.parametrize("name", sorted(he.PARAMETER_SETS))
def test_a_server_context_swapped_for_one_holding_the_secret_key_is_refused(name):
    members = he.generate_client_context(name)
    secret = members.serialize_secret()
    with pytest.raises(CryptoError, match="secret key|too large"):
        he.ServerContext.from_public_bytes(secret, name)
    # Also when handed an already-loaded TenSEAL context object (not bytes).
    with pytest.raises(CryptoError, match="secret key"):
        he.ServerContext(ts.context_from(secret), he.get_params(name))
    # The genuine public context holds no key and cannot decrypt what it aggregates.
    server = he.ServerContext.from_public_bytes(members.public_bytes(), name)
    assert not ts.context_from(members.public_bytes()).has_secret_key()
    assert isinstance(server, he.ServerContext)


@pytest.mark.parametrize(
    "n, chain, scale_bits",
    [(2048, [30, 24], 20), (4096, [40, 30], 25), (8192, [60, 60], 40), (4096, [53, 56], 40), (4096, [40, 20, 40], 20)],
)
def test_a_client_context_deviating_from_the_pinned_parameters_is_refused(n, chain, scale_bits):
    """A provisioning file (or a server) hands a member a context that is weaker or merely different
    from the pinned set, under the pinned set's name: refused on load, by clients and the server."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=chain, encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    ctx.global_scale = 2.0**scale_bits
    secret = ctx.serialize(save_secret_key=True, save_public_key=False, save_relin_keys=False, save_galois_keys=False)
    public = ctx.serialize(save_secret_key=False, save_public_key=False, save_relin_keys=False, save_galois_keys=False)
    with pytest.raises(SecureFedError):
        he.ClientContext.from_secret_bytes(secret, he.DEFAULT_PARAMS_NAME)
    with pytest.raises(SecureFedError):
        he.ServerContext.from_public_bytes(public, he.DEFAULT_PARAMS_NAME)


def test_a_contribution_under_an_outsider_key_releases_nothing(federation):
    """A Sybil without the federation key (or a server injecting its own ciphertext) makes the
    members' decryption abort: no aggregate is released."""
    params, members, server = federation
    outsider = he.generate_client_context(params)
    agg = he.ServerAggregator(server, 100)
    agg.add(members.encrypt(np.full(100, 0.25)), sender="a")
    agg.add(outsider.encrypt(np.full(100, 0.25)), sender="sybil")
    with pytest.raises(ProtocolAbort):
        members.decrypt(agg.result_chunks(), 100, summands=2)


def test_the_he_layer_alone_would_decrypt_one_upload_as_a_sum_so_members_check_provenance(federation):
    """CKKS gives the sum no integrity: decrypting member A's ciphertext passed off as "the aggregate"
    returns A's update, and the range check cannot tell (A's update is a plausible sum). So the
    wrapper's decrypt must never see a ciphertext the member did not add up itself: the client daemon
    checks the signed contributions first (``securefed.client.ckks_session.checked_contributions``; see
    ``test_a_single_upload_or_an_unsigned_sum_is_not_decrypted_by_a_member``)."""
    params, members, server = federation
    rng = np.random.default_rng(7)  # not secret: test data
    x_a, x_b, x_c = (rng.uniform(-1, 1, 300) for _ in range(3))
    uploads = {name: members.encrypt(x) for name, x in (("a", x_a), ("b", x_b), ("c", x_c))}
    agg = he.ServerAggregator(server, 300)
    for name, enc in uploads.items():
        agg.add(enc, sender=name)
    honest = members.decrypt(agg.result_chunks(), 300, summands=3)
    assert np.allclose(honest, x_a + x_b + x_c, atol=1e-3)
    lie = members.decrypt(uploads["a"].to_chunks(), 300, summands=3)  # what member B is asked to decrypt
    assert np.allclose(lie, x_a, atol=1e-3)  # the server learns x_a: nothing stopped it


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(0, 5000), flip=st.integers(0, 10**6), junk=st.binary(max_size=64))
def test_a_malformed_aggregate_from_the_server_is_a_typed_error_never_a_crash(federation, cut, flip, junk):
    params, members, server = federation
    chunk = _AGG_BASE.setdefault("chunk", _aggregate_chunk(members, server))
    variants = [chunk[: cut % len(chunk)], chunk + junk, bytearray(chunk)]
    variants[2][flip % len(chunk)] ^= 0x10
    for bad in (bytes(v) for v in variants):
        try:
            out = members.decrypt([bad], 64, summands=2)
        except (InvalidMessage, ProtocolAbort):
            continue
        assert out.shape == (64,) and np.all(np.isfinite(out))  # a still-valid ciphertext (no integrity)


_AGG_BASE: dict[str, bytes] = {}


def _aggregate_chunk(members, server) -> bytes:
    agg = he.ServerAggregator(server, 64)
    agg.add(members.encrypt(np.full(64, 0.5)), sender="a")
    agg.add(members.encrypt(np.full(64, -0.25)), sender="b")
    return agg.result_chunks()[0]


# ---- the member-side decryption check (securefed.client.ckks_session) -------------------------------------


def _ckks_round(n: int, t: int, *, with_identities: bool = False):
    """n members with real CKKS uploads, each signed for one plan and attempt as the daemon does."""
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.protocol.ckks import contribution_digest, contribution_payload
    from securefed.transport._generated import federation_pb2 as pb

    params = he.get_params(he.DEFAULT_PARAMS_NAME)
    members = he.generate_client_context(params)
    names = [f"org-{i}" for i in range(n)]
    ids = {c: IdentityKeyPair.generate() for c in names}
    plan = pb.RoundPlan(round=7, plan_sha256=bytes(range(32)), mode=pb.AGGREGATION_MODE_CKKS, vector_length=50,
                        cohort=[pb.CohortMember(client_id=c, identity_public_key=ids[c].public_bytes()) for c in names],
                        secagg=pb.SecAggParams(threshold=t))
    rng = np.random.default_rng(11)  # not secret: test data
    updates = {c: rng.uniform(-1, 1, 50) for c in names}
    uploads = {}
    for c in names:
        chunks = members.encrypt(updates[c]).to_chunks()
        digest = contribution_digest(chunks)
        uploads[c] = (ids[c].sign(contribution_payload(plan.plan_sha256, 7, c, digest)), chunks, digest)
    if with_identities:
        return members, plan, names, updates, uploads, ids
    return members, plan, names, updates, uploads


def _member_decrypts(members, plan, me, parts, own_digest):
    """What the client daemon does with a decryption request (securefed/client/ckks_session.py CkksSession.confirm)."""
    from securefed.client.ckks_session import checked_contributions

    items = checked_contributions(plan, 7, parts, me, own_digest)
    agg = he.ServerAggregator(he.ServerContext.from_public_bytes(members.public_bytes(), members.params), 50)
    for c in items:
        agg.add(c.chunks, sender=c.client)
    return members.decrypt(agg.result_chunks(), 50, summands=len(items))


def test_a_single_upload_or_an_unsigned_sum_is_not_decrypted_by_a_member():
    from securefed.protocol.ckks import encode_contributions

    members, plan, names, _, uploads = _ckks_round(5, 3)
    me, victim = names[0], names[1]
    alone = encode_contributions([(victim, uploads[victim][0], uploads[victim][1])])
    with pytest.raises(ProtocolAbort):
        _member_decrypts(members, plan, me, alone, uploads[me][2])
    forged = encode_contributions([(c, bytes(64), uploads[c][1]) for c in names[:3]])
    with pytest.raises(ProtocolAbort, match="not signed"):
        _member_decrypts(members, plan, me, forged, uploads[me][2])


def _confirm(plan, me: str, parts, own_digest, identity) -> tuple[bytes, bytes]:
    """A member's first step (daemon ``_ckks_confirm``): check the request, sign its digest once."""
    from securefed.client.ckks_session import checked_contributions
    from securefed.protocol.ckks import confirmation_payload, digest_parts

    checked_contributions(plan, 7, parts, me, own_digest)
    digest = digest_parts(parts)
    return digest, identity.sign(confirmation_payload(plan.plan_sha256, 7, digest))


def test_different_contributor_sets_per_decryptor_cannot_all_be_confirmed():
    """The attack that broke the first version of the member-side check: the server asks member i about
    {i, i+1, i+2} (n = 5, t = 3). Each request is a valid signed sum with the member's own upload, and
    five different sums would solve for every update. Now a member confirms one request per attempt
    and decrypts only a request that a strict majority confirmed: no request here gets more than one
    confirmation, so nobody decrypts, whatever confirmations the server forwards."""
    from securefed.client.ckks_session import check_confirmations
    from securefed.protocol.ckks import encode_contributions
    from securefed.transport._generated import federation_pb2 as pb
    from securefed.transport._generated import secagg_pb2 as spb

    n, t = 5, 3
    members, plan, names, updates, uploads, ids = _ckks_round(n, t, with_identities=True)
    confirmations = {}
    for i, me in enumerate(names):
        subset = sorted(names[(i + j) % n] for j in range(t))
        parts = encode_contributions([(c, uploads[c][0], uploads[c][1]) for c in subset])
        confirmations[me] = _confirm(plan, me, parts, uploads[me][2], ids[me])
    # The server forwards every confirmation it holds with each member's request: only one verifies.
    every = [spb.ConsistencySignature(client_id=c, signature=sig) for c, (_, sig) in confirmations.items()]
    for me, (digest, _) in confirmations.items():
        req = pb.DecryptRequest(request_sha256=digest, confirmations=every)
        with pytest.raises(ProtocolAbort, match="does not verify"):
            check_confirmations(plan, 7, digest, req)
        mine = [x for x in every if x.client_id == me]
        with pytest.raises(ProtocolAbort, match="only 1 members confirmed"):
            check_confirmations(plan, 7, digest, pb.DecryptRequest(request_sha256=digest, confirmations=mine))
    # Control: one set confirmed by a strict majority is decrypted (one sum, the protocol's output).
    parts = encode_contributions([(c, uploads[c][0], uploads[c][1]) for c in names])
    conf = {c: _confirm(plan, c, parts, uploads[c][2], ids[c]) for c in names[:t]}
    digest = next(iter(conf.values()))[0]
    req = pb.DecryptRequest(request_sha256=digest,
                            confirmations=[spb.ConsistencySignature(client_id=c, signature=sig) for c, (_, sig) in conf.items()])
    assert check_confirmations(plan, 7, digest, req) == t
    total = _member_decrypts(members, plan, names[0], parts, uploads[names[0]][2])
    assert np.allclose(total, sum(updates.values()), atol=1e-3)


def test_without_the_confirmation_step_per_decryptor_sets_would_reveal_every_update():
    """Why the confirmation step matters (and a control that the attack above is real): decrypting
    each member's own valid request, as the first version did, gives five sums that solve for every
    individual update."""
    from securefed.protocol.ckks import encode_contributions

    n, t = 5, 3
    members, plan, names, updates, uploads = _ckks_round(n, t)
    A = np.zeros((n, n))
    sums = []
    for i, me in enumerate(names):
        subset = [names[(i + j) % n] for j in range(t)]
        A[i, [(i + j) % n for j in range(t)]] = 1
        parts = encode_contributions([(c, uploads[c][0], uploads[c][1]) for c in sorted(subset)])
        sums.append(_member_decrypts(members, plan, me, parts, uploads[me][2]))
    recovered = np.linalg.solve(A, np.stack(sums))
    for i, c in enumerate(names):
        assert np.allclose(recovered[i], updates[c], atol=1e-4)
