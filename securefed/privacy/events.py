"""DP events: one frozen, validated record per release of a noisy update.

A ``DpEvent`` says *what was done* (noise multiplier, sampling rate, number of steps, delta,
clip norm, sampler, RNG mode, library versions, config hash) and, from schema 2 on, *where and on
what* (``EventContext``: the federation, the plan the member accepted, the round, the dataset's
fingerprint and size, the unit of privacy, the base model); epsilon is never stored in it. The
accountants derive epsilon from a sequence of events on request, so a ledger can always be
re-accounted by an auditor with a different implementation.

Validation happens on construction, so an invalid event can neither be composed nor written to a
ledger. Only Poisson subsampling is accepted: the subsampled-Gaussian analyses in Opacus and
dp-accounting assume it, and accounting a shuffled or fixed-size batch with them would under-count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from securefed import __version__, versions
from securefed.errors import AccountingError, InvalidInput, InvalidMessage

#: Version of the event record layout; part of the canonical bytes so a format change cannot be
#: confused with an old event. Schema 1 (no context) and schema 2 (context; opacus, torch and
#: securefed versions only) stay readable, byte for byte: their hashes and signatures in old ledgers
#: must keep verifying. Schema 3 records every library that changes a member's numbers
#: (``securefed.versions.NUMERICS_LIBRARIES``); its context is present whenever the release had one.
EVENT_SCHEMA_VERSION = 3
SCHEMA_WITH_CONTEXT = 2
SCHEMA_WITHOUT_CONTEXT = 1

#: Canonical events are a few hundred bytes; anything far larger is refused before parsing.
MAX_EVENT_BYTES = 16 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_MAX_ROUND = 2**53  # JSON numbers stay exact up to here
_FEDERATION_ID = re.compile(r"[^\x00-\x1f\x7f]{0,64}")
_MODES = frozenset({"secagg", "ckks", "plaintext"})


class PrivacyUnit(str, Enum):
    """What one "training example" (the unit DP-SGD protects) is in the member's data."""

    RECORD = "record"  # one JSONL record (truncated or padded to max_seq_len tokens)
    TOKEN_BLOCK = "token-block"  # one fixed-length block of a token stream (the demo corpus)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventContext:
    """Where a release happened and on what data.

    - ``federation_id``: the operator's federation id, as the plan named it ("" if it named none).
    - ``plan_sha256``: digest of the round plan the member accepted (hex).
    - ``federation_round``: the global-adapter version the attempt would produce (round N of the run).
    - ``mode``, ``cohort_size``, ``threshold``: how the plan protected the update ("secagg", "ckks",
      "plaintext"), how many members it listed, and the aggregation threshold.
    - ``dataset_fingerprint``: salted SHA-256 of the member's training records (hex), the same in every
      federation this data joins; the salt stays with the member, so it reveals nothing about the data.
    - ``dataset_size``: N, the number of training examples sampling drew from (q = batch / N).
    - ``privacy_unit``: what one example is (``PrivacyUnit``).
    - ``base_model``: fingerprint of the base checkpoint the plan named ("" when it named none).
    """

    federation_id: str
    plan_sha256: str
    federation_round: int
    mode: str
    cohort_size: int
    threshold: int
    dataset_fingerprint: str
    dataset_size: int
    privacy_unit: PrivacyUnit
    base_model: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.federation_id, str) or not _FEDERATION_ID.fullmatch(self.federation_id):
            raise InvalidInput("context.federation_id must be at most 64 printable characters")
        if self.mode not in _MODES:
            raise InvalidInput(f"context.mode must be one of {sorted(_MODES)}, got {self.mode!r}")
        for name in ("plan_sha256", "dataset_fingerprint"):
            v = getattr(self, name)
            if not isinstance(v, str) or not _HEX64.fullmatch(v):
                raise InvalidInput(f"context.{name} must be 64 lowercase hex characters (SHA-256)")
        if not isinstance(self.base_model, str) or (self.base_model and not _HEX64.fullmatch(self.base_model)):
            raise InvalidInput("context.base_model must be empty or 64 lowercase hex characters")
        for name in ("federation_round", "dataset_size", "cohort_size", "threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _MAX_ROUND:
                raise InvalidInput(f"context.{name} must be an integer >= 0, got {v!r}")
        if self.dataset_size < 1:
            raise InvalidInput("context.dataset_size must be at least 1")
        try:
            object.__setattr__(self, "privacy_unit", PrivacyUnit(self.privacy_unit))
        except ValueError:
            raise InvalidInput(f"context.privacy_unit {self.privacy_unit!r} is not one of "
                               f"{[u.value for u in PrivacyUnit]}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"federation_id": self.federation_id, "plan_sha256": self.plan_sha256,
                "federation_round": self.federation_round, "mode": self.mode, "cohort_size": self.cohort_size,
                "threshold": self.threshold, "dataset_fingerprint": self.dataset_fingerprint,
                "dataset_size": self.dataset_size, "privacy_unit": self.privacy_unit.value,
                "base_model": self.base_model}

    @classmethod
    def from_dict(cls, data: Any) -> EventContext:
        if not isinstance(data, dict) or set(data) != _CONTEXT_KEYS:
            raise InvalidMessage(f"DP event context must have exactly the keys {sorted(_CONTEXT_KEYS)}")
        try:
            return cls(**data)
        except (InvalidInput, TypeError) as exc:
            raise InvalidMessage(f"invalid DP event context: {exc}") from None


_CONTEXT_KEYS = frozenset({"federation_id", "plan_sha256", "federation_round", "mode", "cohort_size", "threshold",
                           "dataset_fingerprint",
                           "dataset_size", "privacy_unit", "base_model"})


class Sampler(str, Enum):
    """How batches were drawn. Only ``POISSON`` can be accounted by the subsampled-Gaussian analysis."""

    POISSON = "poisson"
    SHUFFLE = "shuffle"
    FIXED_SIZE = "fixed_size"


class AccountantName(str, Enum):
    """Registered accountants (see ``securefed.privacy.accountants``)."""

    RDP = "rdp"
    PRV = "prv"


def parse_accountant_name(name: str | AccountantName) -> AccountantName:
    """``"rdp"``/``"prv"`` -> enum; anything else is refused, never guessed."""
    if isinstance(name, AccountantName):
        return name
    try:
        return AccountantName(str(name).lower())
    except ValueError:
        known = ", ".join(a.value for a in AccountantName)
        raise AccountingError(f"unknown accountant {name!r}: use one of {known}") from None


def canonical_json(obj: Any) -> bytes:
    """The one byte encoding that is hashed and signed: sorted keys, no spaces, UTF-8, no NaN/Inf.

    Floats are written with ``repr`` (shortest round-trip form), so decode -> encode is the identity.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def utc_timestamp(now: datetime | None = None) -> str:
    """ISO-8601 UTC with microseconds and a ``Z``: ``2026-11-28T05:00:00.000000Z``."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_LEGACY_LIBRARIES = frozenset({"opacus", "torch", "securefed"})  # schema 1 and 2 events
_ALL_LIBRARIES = frozenset({"securefed", *versions.NUMERICS_LIBRARIES})  # schema 3


@dataclass(frozen=True, slots=True)
class LibraryVersions:
    """Versions of the code that trained and accounted (read from package metadata; imports nothing heavy).

    Either all of them (schema 3 events) or, as events before schema 3 recorded, only opacus, torch and
    securefed (the other fields None)."""

    opacus: str
    torch: str
    securefed: str
    transformers: str | None = None
    peft: str | None = None
    bitsandbytes: str | None = None
    tenseal: str | None = None

    def __post_init__(self) -> None:
        present = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        if present not in (_LEGACY_LIBRARIES, _ALL_LIBRARIES):
            raise InvalidInput(f"library_versions must name exactly {sorted(_ALL_LIBRARIES)} "
                               f"(or, before schema 3, {sorted(_LEGACY_LIBRARIES)})")
        for name in present:
            v = getattr(self, name)
            if not isinstance(v, str) or not v or len(v) > 64:
                raise InvalidInput(f"library_versions.{name} must be a non-empty string of at most 64 characters")

    @property
    def complete(self) -> bool:
        """Every numerics library recorded (a schema 3 event)."""
        return self.transformers is not None

    @classmethod
    def current(cls) -> LibraryVersions:
        return cls(securefed=__version__, **versions.installed())

    def to_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


def _finite_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be finite, got {value}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class DpEvent:
    """One client's DP-SGD run in one round: ``steps`` Poisson-subsampled Gaussian mechanisms.

    Fields (all validated on construction; bad values raise ``InvalidInput``, an unsupported
    sampler raises ``AccountingError``):

    - ``client_id``: the client whose data was used.
    - ``round_id``: federation round (>= 0).
    - ``noise_multiplier`` (sigma >= 0): noise std / clip norm. 0 means no privacy (epsilon = inf).
    - ``sample_rate`` (q in [0, 1]): Poisson sampling probability per step.
    - ``steps`` (>= 0): number of noisy gradient steps.
    - ``delta`` (0 < delta < 1): the delta of the client's budget.
    - ``clip_norm`` (C > 0): per-sample gradient clip norm (recorded for audit; epsilon does not depend on it).
    - ``accountant``: the accountant the client enforced its budget with.
    - ``sampler``: must be ``Sampler.POISSON``.
    - ``secure_rng``: whether noise came from a cryptographically secure RNG.
    - ``library_versions``: securefed and the numerics libraries (torch, transformers, peft, opacus,
      bitsandbytes, tenseal); opacus / torch / securefed only in events before schema 3.
    - ``config_hash``: SHA-256 (hex) of the training configuration.
    - ``timestamp``: ISO-8601 UTC, see ``utc_timestamp``.
    - ``context``: ``EventContext`` (schema 2), or None for a schema 1 event (written before it existed).
    """

    client_id: str
    round_id: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    clip_norm: float
    accountant: AccountantName
    sampler: Sampler = Sampler.POISSON
    secure_rng: bool
    library_versions: LibraryVersions
    config_hash: str
    timestamp: str
    context: EventContext | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise types in place once, here
        if not isinstance(self.client_id, str) or not _CLIENT_ID.fullmatch(self.client_id):
            raise InvalidInput(
                f"client_id {self.client_id!r} must be 1-128 characters of letters, digits and ._:@- "
                "(starting with a letter or digit)"
            )
        for name in ("round_id", "steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _MAX_ROUND:
                raise InvalidInput(f"{name} must be an integer >= 0, got {v!r}")
        sigma = _finite_float("noise_multiplier", self.noise_multiplier)
        if sigma < 0:
            raise InvalidInput(f"noise_multiplier must be >= 0, got {sigma}")
        q = _finite_float("sample_rate", self.sample_rate)
        if not 0.0 <= q <= 1.0:
            raise InvalidInput(f"sample_rate must be in [0, 1], got {q}")
        delta = _finite_float("delta", self.delta)
        if not 0.0 < delta < 1.0:
            raise InvalidInput(f"delta must be in (0, 1), got {delta}")
        clip = _finite_float("clip_norm", self.clip_norm)
        if clip <= 0:
            raise InvalidInput(f"clip_norm must be > 0, got {clip}")
        set_(self, "noise_multiplier", sigma)
        set_(self, "sample_rate", q)
        set_(self, "delta", delta)
        set_(self, "clip_norm", clip)
        set_(self, "accountant", parse_accountant_name(self.accountant))
        try:
            sampler = Sampler(self.sampler)
        except ValueError:
            raise AccountingError(
                f"unknown sampler {self.sampler!r}: the accountant only supports Poisson subsampling"
            ) from None
        if sampler is not Sampler.POISSON:
            raise AccountingError(
                f"sampler {sampler.value!r} cannot be accounted: the accountant only supports Poisson "
                "subsampling; train with Poisson sampling (Opacus DPDataLoader)"
            )
        set_(self, "sampler", sampler)
        if not isinstance(self.secure_rng, bool):
            raise InvalidInput(f"secure_rng must be true or false, got {self.secure_rng!r}")
        if not isinstance(self.library_versions, LibraryVersions):
            raise InvalidInput("library_versions must be a LibraryVersions")
        if not isinstance(self.config_hash, str) or not _HEX64.fullmatch(self.config_hash):
            raise InvalidInput("config_hash must be 64 lowercase hex characters (SHA-256)")
        if not isinstance(self.timestamp, str):
            raise InvalidInput("timestamp must be an ISO-8601 UTC string")
        try:
            parsed = datetime.strptime(self.timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError:
            raise InvalidInput(
                f"timestamp {self.timestamp!r} must look like 2026-01-31T12:00:00.000000Z"
            ) from None
        if utc_timestamp(parsed.replace(tzinfo=UTC)) != self.timestamp:
            raise InvalidInput(f"timestamp {self.timestamp!r} is not in canonical form")
        if self.context is not None and not isinstance(self.context, EventContext):
            raise InvalidInput("context must be an EventContext or None")

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        if self.library_versions.complete:
            schema = EVENT_SCHEMA_VERSION
        else:
            schema = SCHEMA_WITH_CONTEXT if self.context is not None else SCHEMA_WITHOUT_CONTEXT
        d: dict[str, Any] = {
            "schema": schema,
            "client_id": self.client_id,
            "round_id": self.round_id,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
            "clip_norm": self.clip_norm,
            "accountant": self.accountant.value,
            "sampler": self.sampler.value,
            "secure_rng": self.secure_rng,
            "library_versions": self.library_versions.to_dict(),
            "config_hash": self.config_hash,
            "timestamp": self.timestamp,
        }
        if self.context is not None:
            d["context"] = self.context.to_dict()
        return d

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> DpEvent:
        """Strict inverse of ``to_dict``: unknown or missing keys raise ``InvalidMessage``."""
        if not isinstance(data, dict):
            raise InvalidMessage("DP event must be a JSON object")
        schema = data.get("schema")
        if schema not in (SCHEMA_WITHOUT_CONTEXT, SCHEMA_WITH_CONTEXT, EVENT_SCHEMA_VERSION) or isinstance(schema, bool):
            raise InvalidMessage(f"unsupported DP event schema {schema!r}")
        with_context = schema == SCHEMA_WITH_CONTEXT or (schema == EVENT_SCHEMA_VERSION and "context" in data)
        expected = _EVENT_KEYS | ({"context"} if with_context else set())
        keys = set(data)
        if keys != expected:
            missing, extra = sorted(expected - keys), sorted(keys - expected)
            raise InvalidMessage(f"DP event keys do not match schema (missing {missing}, unexpected {extra})")
        lv = data["library_versions"]
        libraries = _ALL_LIBRARIES if schema == EVENT_SCHEMA_VERSION else _LEGACY_LIBRARIES
        if not isinstance(lv, dict) or set(lv) != libraries:
            raise InvalidMessage(f"DP event library_versions must have exactly {', '.join(sorted(libraries))} "
                                 f"in schema {schema}")
        kwargs = {k: v for k, v in data.items() if k not in ("schema", "library_versions", "context")}
        context = EventContext.from_dict(data["context"]) if "context" in data else None
        try:
            return cls(library_versions=LibraryVersions(**lv), context=context, **kwargs)
        except InvalidInput as exc:
            raise InvalidMessage(f"invalid DP event: {exc}") from None

    @classmethod
    def from_json(cls, raw: bytes | str) -> DpEvent:
        """Parse canonical JSON; the bytes must be exactly canonical (no second encoding of one event).

        Safe on untrusted input (it arrives over the network at the server): size-limited, no pickle,
        every failure an ``InvalidMessage``."""
        if len(raw) > MAX_EVENT_BYTES:
            raise InvalidMessage(f"DP event is larger than {MAX_EVENT_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidMessage("DP event is not valid JSON") from None
        event = cls.from_dict(data)
        raw_bytes = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        if event.canonical_bytes() != raw_bytes:
            raise InvalidMessage("DP event JSON is not in canonical form")
        return event


# The exact key set of ``DpEvent.to_dict`` (a test checks they agree).
_EVENT_KEYS = frozenset(
    {"schema", "client_id", "round_id", "noise_multiplier", "sample_rate", "steps", "delta", "clip_norm",
     "accountant", "sampler", "secure_rng", "library_versions", "config_hash", "timestamp"}
)


def event_from_training(
    result: Any,
    *,
    client_id: str,
    round_id: int,
    delta: float,
    accountant: str | AccountantName,
    config_hash: str,
    library_versions: LibraryVersions | None = None,
    timestamp: str | None = None,
    context: EventContext | None = None,
) -> DpEvent:
    """Build the event for a ``securefed.training`` result (duck-typed: steps, sample_rate,
    noise_multiplier, clip_norm, secure_rng, and optionally sampler)."""
    sampler = getattr(result, "sampler", Sampler.POISSON)
    try:
        return DpEvent(
            client_id=client_id,
            round_id=round_id,
            noise_multiplier=result.noise_multiplier,
            sample_rate=result.sample_rate,
            steps=result.steps,
            delta=delta,
            clip_norm=result.clip_norm,
            accountant=accountant,
            sampler=getattr(sampler, "value", sampler),
            secure_rng=bool(result.secure_rng),
            library_versions=library_versions or LibraryVersions.current(),
            config_hash=config_hash,
            timestamp=timestamp or utc_timestamp(),
            context=context,
        )
    except AttributeError as exc:
        raise InvalidInput(f"training result lacks a field the DP event needs: {exc.name}") from None
