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


def _single(enc: he.EncryptedVector) -> he.EncryptedSum:
    return he.EncryptedSum(enc.params_name, enc.length, enc.c0, (enc.seeds,))


def _sum(server, encs: dict) -> he.EncryptedSum:
    length = next(iter(encs.values())).length
    agg = he.ServerAggregator(server, length)
    for name, enc in encs.items():
        agg.add(enc, sender=name)
    return agg.result()


def test_a_contribution_under_an_outsider_key_releases_nothing(federation):
    """A Sybil without the federation key (or a server injecting its own ciphertext) makes the
    members' decryption abort: no aggregate is released."""
    params, members, server = federation
    outsider = he.generate_client_context(params)
    total = _sum(server, {"a": members.encrypt(np.full(100, 0.25)), "sybil": outsider.encrypt(np.full(100, 0.25))})
    with pytest.raises(ProtocolAbort):
        members.decrypt(total)


def test_the_he_layer_alone_would_decrypt_one_upload_as_a_sum_so_members_check_provenance(federation):
    """CKKS gives the sum no integrity: decrypting member A's ciphertext passed off as "the aggregate"
    returns A's update, and the range check cannot tell (A's update is a plausible sum). So the
    wrapper's decrypt must never see a sum the member did not check: the client daemon checks the
    signed contributions and the sum's linear tag first (``securefed.client.ckks_session``; see
    ``test_a_forged_aggregate_is_refused_by_the_member_and_would_be_released_without_the_tag_check``)."""
    params, members, server = federation
    rng = np.random.default_rng(7)  # not secret: test data
    xs = {name: rng.uniform(-1, 1, 300) for name in "abc"}
    uploads = {name: members.encrypt(x) for name, x in xs.items()}
    honest = members.decrypt(_sum(server, uploads))
    assert np.allclose(honest, sum(xs.values()), atol=1e-3)
    lie = members.decrypt(_single(uploads["a"]), summands=3)  # what member B is asked to decrypt
    assert np.allclose(lie, xs["a"], atol=1e-3)  # the server learns x_a: nothing stopped it


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(0, 10**6), flip=st.integers(0, 10**6), junk=st.binary(max_size=64), part=st.integers(0, 3))
def test_a_malformed_decryption_request_is_a_typed_error_never_a_crash(cut, flip, junk, part):
    from securefed.client.ckks_session import check_sum, checked_contributions

    r = _ROUND.setdefault("r", _ckks_round(3, 2))
    members, plan, names, own = r["members"], r["plan"], r["names"], r["own"]
    parts = list(_request(r, names))
    blob = bytearray(parts[part])
    variants = [bytes(blob[: cut % max(1, len(blob))]), bytes(blob) + junk]
    if blob:
        blob[flip % len(blob)] ^= 0x10
        variants.append(bytes(blob))
    for bad in variants:
        mutated = parts[:part] + [bad] + parts[part + 1:]
        try:
            items, c0 = checked_contributions(plan, 7, mutated, names[0], own[names[0]])
            check_sum(members, plan, 7, items, c0)
        except (InvalidMessage, ProtocolAbort):
            continue
        assert mutated == parts  # only an unchanged request passes every check


_ROUND: dict = {}


# ---- the member-side decryption check (securefed.client.ckks_session) -------------------------------------


def _ckks_round(n: int, t: int, *, length: int = 50) -> dict:
    """n members with real CKKS uploads, each tagged, sealed and signed for one plan and attempt as the
    daemon does (``make_contribution``)."""
    from securefed.client.ckks_session import make_contribution
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.protocol.ckks import split_upload
    from securefed.transport._generated import federation_pb2 as pb

    params = he.get_params(he.DEFAULT_PARAMS_NAME)
    members = he.generate_client_context(params)
    server = he.ServerContext.from_public_bytes(members.public_bytes(), params)
    names = [f"org-{i}" for i in range(n)]
    ids = {c: IdentityKeyPair.generate() for c in names}
    plan = pb.RoundPlan(round=7, plan_sha256=bytes(range(32)), mode=pb.AGGREGATION_MODE_CKKS, vector_length=length,
                        cohort=[pb.CohortMember(client_id=c, identity_public_key=ids[c].public_bytes()) for c in names],
                        secagg=pb.SecAggParams(threshold=t))
    rng = np.random.default_rng(11)  # not secret: test data
    updates = {c: rng.uniform(-1, 1, length) for c in names}
    own, vecs = {}, {}
    for c in names:
        own[c], parts = make_contribution(members, ids[c], plan.plan_sha256, 7, c, updates[c])
        up = split_upload(parts)
        vecs[c] = he.EncryptedVector.from_parts(params, up.c0, up.seeds, length)
    return {"members": members, "server": server, "plan": plan, "names": names, "ids": ids, "updates": updates,
            "own": own, "vecs": vecs}


def _request(r: dict, subset, c0: bytes | None = None) -> list[bytes]:
    """What the server driver sends (``CkksDriver._confirm_phase``): the subset's sum and entries."""
    from securefed.protocol.ckks import encode_request

    subset = sorted(subset)
    total = _sum(r["server"], {c: r["vecs"][c] for c in subset})
    return encode_request([r["own"][c] for c in subset], total.c0 if c0 is None else c0)


def _member_decrypts(r: dict, me: str, parts, *, tag_check: bool = True):
    """What the client daemon does with a decryption request (CkksSession.confirm, then decrypt)."""
    from securefed.client.ckks_session import check_sum, checked_contributions

    items, c0 = checked_contributions(r["plan"], 7, parts, me, r["own"][me])
    if tag_check:
        total = check_sum(r["members"], r["plan"], 7, items, c0)
    else:  # the negative control: what a member without the tag check would decrypt
        total = he.EncryptedSum.from_parts(r["members"].params, c0, [c.seeds for c in items], int(r["plan"].vector_length))
    return r["members"].decrypt(total)


def test_a_single_upload_or_an_unsigned_sum_is_not_decrypted_by_a_member():
    from securefed.protocol.ckks import encode_request

    r = _ckks_round(5, 3)
    names = r["names"]
    me, victim = names[0], names[1]
    with pytest.raises(ProtocolAbort, match="threshold"):
        _member_decrypts(r, me, _request(r, [victim]))
    forged = encode_request([r["own"][c]._replace(signature=bytes(64)) for c in sorted(names[:3])],
                            _sum(r["server"], {c: r["vecs"][c] for c in names[:3]}).c0)
    with pytest.raises(ProtocolAbort, match="not signed"):
        _member_decrypts(r, me, forged)


def test_a_forged_aggregate_is_refused_by_the_member_and_would_be_released_without_the_tag_check():
    """The server hands a decryptor something other than the listed contributors' sum, under valid
    signatures: the sum shifted by a trivial encryption of an offset it chose (CKKS is malleable),
    member B's ciphertext alone, B weighted 1000x, or B twice in place of C. The member refuses (tag
    mismatch); the control shows that without the tag check it decrypts the shifted sum, in range and
    plausible, and releases it: the server would steer (or probe with) what members release."""
    import tenseal.sealapi as sealapi

    r = _ckks_round(3, 2, length=4096)
    names, vecs, members = r["names"], r["vecs"], r["members"]
    q, p = members.primes[0], members.params
    me, b = names[0], names[1]

    def c0_of(c):
        return he.vector.unpack_coeffs(vecs[c].c0, p.coeff_bytes, members.primes, p.poly_modulus_degree).astype(object)

    def packed(arr):
        return he.vector.pack_coeffs(np.array(arr % q, dtype=np.uint64), p.coeff_bytes)

    pt = sealapi.Plaintext()  # the server needs no key for this: encoding is public
    members._encoder.encode([complex(0.25, 0.25)] * p.slot_count, p.scale, pt)
    offset = np.array([pt.data(i) for i in range(p.poly_modulus_degree)], dtype=object).reshape(1, 1, -1)
    true_sum = sum(c0_of(c) for c in names)
    forgeries = {
        "sum + offset": (names, packed(true_sum + offset)),
        "B's c0 alone": ([me, b], vecs[b].c0),
        "B weighted 1000x": ([me, b], packed(c0_of(me) + 1000 * c0_of(b))),
        "B twice instead of C": (names, packed(c0_of(me) + 2 * c0_of(b))),
    }
    for why, (contributors, c0) in forgeries.items():
        with pytest.raises(ProtocolAbort, match="does not match its contributors' tags"):
            _member_decrypts(r, me, _request(r, contributors, c0=c0))
    # Control: without the tag check the shifted sum is decrypted and released.
    u = r["updates"]
    shifted = _member_decrypts(r, me, _request(r, names, c0=forgeries["sum + offset"][1]), tag_check=False)
    assert np.allclose(shifted, sum(u.values()) + 0.25, atol=1e-3)
    # And the honest sum passes the check and decrypts to the sum.
    assert np.allclose(_member_decrypts(r, me, _request(r, names)), sum(u.values()), atol=1e-3)


def _confirm(r: dict, me: str, parts) -> tuple[bytes, bytes]:
    """A member's first step (CkksSession.confirm): check the request, sign its digest once."""
    from securefed.client.ckks_session import check_sum, checked_contributions
    from securefed.protocol.ckks import confirmation_payload, digest_parts

    items, c0 = checked_contributions(r["plan"], 7, parts, me, r["own"][me])
    check_sum(r["members"], r["plan"], 7, items, c0)
    digest = digest_parts(parts)
    return digest, r["ids"][me].sign(confirmation_payload(r["plan"].plan_sha256, 7, digest))


def test_different_contributor_sets_per_decryptor_cannot_all_be_confirmed():
    """The attack that broke the first version of the member-side check: the server asks member i about
    {i, i+1, i+2} (n = 5, t = 3). Each request is a valid signed sum with the member's own upload (its
    tag matches: it IS that subset's sum), and five different sums would solve for every update. A
    member confirms one request per attempt and decrypts only a request that a strict majority
    confirmed: no request here gets more than one confirmation, so nobody decrypts."""
    from securefed.client.ckks_session import check_confirmations
    from securefed.transport._generated import federation_pb2 as pb
    from securefed.transport._generated import secagg_pb2 as spb

    n, t = 5, 3
    r = _ckks_round(n, t)
    names, plan = r["names"], r["plan"]
    confirmations = {}
    for i, me in enumerate(names):
        subset = [names[(i + j) % n] for j in range(t)]
        confirmations[me] = _confirm(r, me, _request(r, subset))
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
    parts = _request(r, names)
    conf = {c: _confirm(r, c, parts) for c in names[:t]}
    digest = next(iter(conf.values()))[0]
    req = pb.DecryptRequest(request_sha256=digest,
                            confirmations=[spb.ConsistencySignature(client_id=c, signature=sig) for c, (_, sig) in conf.items()])
    assert check_confirmations(plan, 7, digest, req) == t
    assert np.allclose(_member_decrypts(r, names[0], parts), sum(r["updates"].values()), atol=1e-3)


def test_without_the_confirmation_step_per_decryptor_sets_would_reveal_every_update():
    """Why the confirmation step matters (and a control that the attack above is real): decrypting
    each member's own valid request, as the first version did, gives five sums that solve for every
    individual update. The tags do not stop this: each of those sums is genuine."""
    n, t = 5, 3
    r = _ckks_round(n, t)
    names = r["names"]
    A = np.zeros((n, n))
    sums = []
    for i, me in enumerate(names):
        A[i, [(i + j) % n for j in range(t)]] = 1
        sums.append(_member_decrypts(r, me, _request(r, [names[(i + j) % n] for j in range(t)])))
    recovered = np.linalg.solve(A, np.stack(sums))
    for i, c in enumerate(names):
        assert np.allclose(recovered[i], r["updates"][c], atol=1e-4)
