"""Which dataset this member trains on, the ledger that accounts for it, and the context of each release.

The member's data gets a salted fingerprint (``privacy.dataset``): its JSONL records, or the demo
topics of its split. The ledger is then the one for that fingerprint in ``client.ledger_dir``, shared by
every federation the data joins, or the single file ``client.ledger_path`` (bound to one dataset all the
same). A ledger at the old default place (``state_dir/ledger.sqlite``) is never silently left behind:
the member refuses to start until the config names it (its spend keeps counting) or it is moved away.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from securefed.client.config import ClientConfig
from securefed.errors import ConfigError
from securefed.logs import get_logger, log
from securefed.privacy.dataset import (
    DatasetLedgers,
    fingerprint,
    jsonl_record_digests,
    load_salt,
    read_salt,
    text_record_digests,
)
from securefed.privacy.events import EventContext, PrivacyUnit
from securefed.privacy.ledger import LEGACY_LEDGER_VERSION, Ledger, Signer
from securefed.training.data import demo_corpus, split_demo_corpus
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("client")

OLD_DEFAULT_LEDGER = "ledger.sqlite"


@dataclass(frozen=True)
class MemberDataset:
    fingerprint: str
    unit: PrivacyUnit


def default_ledger_dir() -> Path:
    """Per OS account (a member's service account: /var/lib/securefed/.local/share/securefed/ledgers)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "securefed" / "ledgers"


def ledger_dir(config: ClientConfig) -> Path:
    c = config.client
    if c.ledger_path is not None:
        return Path(c.ledger_path).parent
    return Path(c.ledger_dir) if c.ledger_dir is not None else default_ledger_dir()


def member_dataset(config: ClientConfig) -> MemberDataset:
    """This member's dataset, fingerprinted under the salt in its ledger directory (made on first use)."""
    return _dataset(config, load_salt(ledger_dir(config)))


def existing_member_dataset(config: ClientConfig) -> MemberDataset | None:
    """``member_dataset`` without writing anything: None when the ledger directory has no salt yet (so
    no ledger of this data either). For ``--check``."""
    salt = read_salt(ledger_dir(config))
    return None if salt is None else _dataset(config, salt)


def _dataset(config: ClientConfig, salt: bytes) -> MemberDataset:
    d = config.data
    if d.path is not None:
        # Packing puts several text records in one example: the unit DP protects is then the block.
        digests, unit = jsonl_record_digests(d.path), PrivacyUnit.TOKEN_BLOCK if d.pack_text else PrivacyUnit.RECORD
    else:
        topics = demo_corpus()
        names = split_demo_corpus(d.demo_clients).clients[d.demo_client]
        digests, unit = text_record_digests(f"{n}\x00{topics[n]}" for n in names), PrivacyUnit.TOKEN_BLOCK
    return MemberDataset(fingerprint(digests, salt), unit)


def open_ledger(config: ClientConfig, identity: Signer, dataset: MemberDataset) -> DatasetLedgers:
    c = config.client
    if c.ledger_path is not None:
        led = Ledger.open_or_create(c.ledger_path, identity, client_id=c.name, budget=config.privacy,
                                    dataset=dataset.fingerprint)
        if led.header.version == LEGACY_LEDGER_VERSION:
            log(logger, "this ledger predates per-dataset ledgers (format 1): kept, and its new entries name the "
                "dataset", level=logging.WARNING, ledger=str(led.path))
        return DatasetLedgers(led)
    old = Path(c.state_dir) / OLD_DEFAULT_LEDGER
    if old.exists():
        raise ConfigError(
            f"{old}: a privacy ledger at the old default place; set client.ledger_path = \"{old}\" to keep counting "
            "its spend (or move it out of state_dir if it belongs to other data)")
    return DatasetLedgers.open(ledger_dir(config), identity, client_id=c.name, budget=config.privacy,
                               dataset=dataset.fingerprint)


_MODES = {pb.AGGREGATION_MODE_SECAGG: "secagg", pb.AGGREGATION_MODE_CKKS: "ckks", pb.AGGREGATION_MODE_PLAINTEXT: "plaintext"}


def _base_model(plan: pb.RoundPlan) -> str:
    """The base-model fingerprint the plan names (hex); "" when it names none (or this build's plan
    carries no such field)."""
    if "base_model_fingerprint" not in plan.DESCRIPTOR.fields_by_name:
        return ""
    fp = bytes(getattr(plan, "base_model_fingerprint"))
    return fp.hex() if len(fp) == 32 else ""


def event_context(plan: pb.RoundPlan, dataset: MemberDataset, dataset_size: int) -> EventContext:
    """Where a release happens and on what data, as this member saw the plan it accepted: recorded in
    the ledger with the DP event (and so signed, and reported to the server)."""
    return EventContext(federation_id=plan.federation_id, plan_sha256=bytes(plan.plan_sha256).hex(),  # verified
                        federation_round=int(plan.federation_round), mode=_MODES[plan.mode],
                        cohort_size=len(plan.cohort), threshold=int(plan.secagg.threshold),
                        dataset_fingerprint=dataset.fingerprint, dataset_size=dataset_size,
                        privacy_unit=dataset.unit, base_model=_base_model(plan))
