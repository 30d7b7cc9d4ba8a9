"""Shared builders for the privacy tests (not a test module)."""

from __future__ import annotations

from securefed.privacy.events import DpEvent, EventContext, LibraryVersions

FIXED_VERSIONS = LibraryVersions(opacus="1.6.0", torch="2.13.0", securefed="0.1.0")
FIXED_TS = "2026-11-28T05:00:00.000000Z"


def make_event(**overrides) -> DpEvent:
    kwargs = dict(
        client_id="hospital-a",
        round_id=0,
        noise_multiplier=1.5,
        sample_rate=0.04,
        steps=225,
        delta=1e-5,
        clip_norm=1.0,
        accountant="rdp",
        secure_rng=True,
        library_versions=FIXED_VERSIONS,
        config_hash="ab" * 32,
        timestamp=FIXED_TS,
    )
    kwargs.update(overrides)
    return DpEvent(**kwargs)


DATASET_A = "a1" * 32
DATASET_B = "b2" * 32


def make_context(**overrides) -> EventContext:
    kwargs = dict(federation_id="fed-one", plan_sha256="cd" * 32, federation_round=1, mode="secagg", cohort_size=3,
                  threshold=2, dataset_fingerprint=DATASET_A, dataset_size=1000, privacy_unit="record")
    kwargs.update(overrides)
    return EventContext(**kwargs)
