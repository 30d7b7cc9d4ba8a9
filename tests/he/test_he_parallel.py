"""A member's SEAL work on worker processes (he.parallel): the same ciphertexts, sums, checks and
decryptions as in process, range by range, and small vectors never leave the process."""

from __future__ import annotations

import numpy as np
import pytest

from securefed import he
from securefed.errors import ProtocolAbort
from securefed.he import parallel

DEFAULT = he.get_params(he.DEFAULT_PARAMS_NAME)
CHUNK = DEFAULT.chunk_size


@pytest.fixture(scope="module")
def contexts():
    base = he.generate_client_context(DEFAULT)
    par = he.ParallelClientContext(base._ctx, DEFAULT, workers=2)
    server = he.ServerContext.from_public_bytes(base.public_bytes(), DEFAULT.name)
    yield base, par, server
    par.close()


def test_encryption_and_checked_decryption_on_two_processes_match_the_single_process_path(contexts, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_CHUNKS_PER_WORKER", 2)
    base, par, server = contexts
    length = 5 * CHUNK + 123  # the last range ends in a padded chunk
    xs = [np.random.default_rng(i).uniform(-1, 1, length) for i in range(3)]  # not secret: test data
    encs = [par.encrypt(xs[0]), base.encrypt(xs[1]), par.encrypt(xs[2])]
    assert par._pool is not None  # the work really went to the workers
    assert [len(e.c0) for e in encs] == [len(encs[1].c0)] * 3 and len(encs[0].seeds) == len(encs[1].seeds)
    agg = he.ServerAggregator(server, length)
    for i, e in enumerate(encs):
        agg.add(e, sender=f"m{i}")
    total = agg.result()
    keys = base.attempt_keys(bytes(32), 1)
    tags = [base.contribution_tag(e, keys) for e in encs]
    assert par.sum_matches(total, tags, keys)
    one, two = base.decrypt(total, noise_key=keys.flood), par.decrypt(total, noise_key=keys.flood)
    np.testing.assert_array_equal(one, two)  # same ciphertexts, same flooding draw: the same values
    np.testing.assert_allclose(two, np.sum(xs, axis=0), atol=7 * DEFAULT.flood_sigma + 1e-8)


def test_a_foreign_contribution_is_refused_by_the_workers_too(contexts, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_CHUNKS_PER_WORKER", 2)
    base, par, server = contexts
    other = he.generate_client_context(DEFAULT)
    length = 4 * CHUNK
    agg = he.ServerAggregator(server, length)
    agg.add(base.encrypt(np.full(length, 0.5)), sender="honest")
    agg.add(other.encrypt(np.full(length, 0.5)), sender="foreign key")
    with pytest.raises(ProtocolAbort, match="out of range|non-zero padding"):
        par.decrypt(agg.result())


def test_small_vectors_stay_in_process():
    base = he.generate_client_context(DEFAULT)
    par = he.ParallelClientContext(base._ctx, DEFAULT, workers=4)
    total = he.ServerAggregator(he.ServerContext.from_public_bytes(base.public_bytes(), DEFAULT.name), 100)
    total.add(par.encrypt(np.ones(100)), sender="a")
    np.testing.assert_allclose(par.decrypt(total.result()), np.ones(100), atol=1e-5)
    assert par._pool is None


def test_a_broken_pool_falls_back_to_this_process(monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    class Broken:
        def map(self, *a, **k):
            raise BrokenProcessPool("a worker was killed")

    monkeypatch.setattr(parallel, "MIN_CHUNKS_PER_WORKER", 1)
    base = he.generate_client_context(DEFAULT)
    par = he.ParallelClientContext(base._ctx, DEFAULT, workers=2)
    monkeypatch.setattr(he.ParallelClientContext, "_executor", lambda self: Broken())
    enc = par.encrypt(np.full(3 * CHUNK, 0.25))
    assert par.workers == 1 and len(enc.c0) == len(base.encrypt(np.zeros(3 * CHUNK)).c0)


def test_worker_count_defaults_to_the_cores_from_four_on_and_the_variable_overrides(monkeypatch):
    monkeypatch.delenv("SECUREFED_CKKS_WORKERS", raising=False)
    monkeypatch.setattr(parallel.prg, "usable_cores", lambda: 2)
    assert parallel.default_workers() == 1
    monkeypatch.setattr(parallel.prg, "usable_cores", lambda: 8)
    assert parallel.default_workers() == 8
    monkeypatch.setenv("SECUREFED_CKKS_WORKERS", "3")
    assert parallel.default_workers() == 3
