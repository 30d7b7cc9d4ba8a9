"""The one exception tree of securefed.

Every error a user can cause is a ``SecureFedError`` whose message is one line that says
what to change. The CLI prints that line and exits non-zero; it never shows a traceback
for these. Authentication failures say *that* a check failed, not *which* one.
"""

from __future__ import annotations


class SecureFedError(Exception):
    """Base of every error securefed raises on purpose."""

    exit_code: int = 1


class ConfigError(SecureFedError):
    """A configuration value is missing, malformed or unsafe. The message names file and key."""

    exit_code = 2


class InvalidInput(SecureFedError):
    """Bad user-supplied data: wrong vector length, NaN/Inf, malformed JSONL, ..."""

    exit_code = 2


class InvalidMessage(SecureFedError):
    """A message from the network or disk failed to decode or validate (size, shape, range)."""


class NotRegistered(InvalidMessage):
    """The server does not know this member (it restarted, or never saw it register): register again."""


class StaleMessage(InvalidMessage):
    """A message for a round or stage that is not the one open now (late, early, or for an attempt
    that is over): the sender's part in that session is over."""


class ReplayedMessage(StaleMessage):
    """A message already seen: its sequence number is not above the sender's last one in this
    attempt (replayed or reordered), or a second answer to a stage already answered."""


class LedgerConflict(InvalidMessage):
    """A member's reported ledger entry contradicts what it reported before: another entry at a
    recorded position, or one that does not chain to the recorded entry before it (a forked or
    rewritten ledger)."""


class CheckpointError(InvalidMessage):
    """A global bundle (a checkpoint file, or the bytes a peer sent) is missing, unreadable, or does not
    match its digest."""


class StateError(SecureFedError):
    """Durable local state (the coordinator's round log) is unreadable or inconsistent."""


class RoundLogError(StateError):
    """The round log is unreadable or inconsistent, or refuses a change (a second completion of a
    round, an update of an attempt that is not running). A member's contradictory ledger report is
    ``LedgerConflict``."""


class DiskWriteError(StateError):
    """A local write failed: the disk is full, a file size limit was reached, or the disk fails. What
    depended on it was not done (no update released, no round committed); the message names the file
    and what to do (``securefed.storage``). A restart, once there is space, goes on where it stopped."""


class CryptoError(SecureFedError):
    """A cryptographic check failed (bad key, low-order point, authentication failure)."""


class ProtocolAbort(SecureFedError):
    """The secure-aggregation protocol must stop: no aggregate is released for this session."""


class SecurityAlert(ProtocolAbort):
    """A check an honest peer never fails: a plan no honest server sends, a global adapter that is not
    the announced one, an uncertified cohort member. The member leaves the session, logs an ERROR and
    reports it to the operator (``securefed status``). ``kind``: plan, digest, ledger, authentication."""

    def __init__(self, message: str, *, kind: str = "plan") -> None:
        super().__init__(message)
        self.kind = kind


class InsecureParameters(ConfigError):
    """Parameters that would break a security or correctness guarantee (overflow, weak HE, low threshold)."""


class PrivacyError(SecureFedError):
    """Base for differential-privacy accounting errors."""


class BudgetExceeded(PrivacyError):
    """Training would exceed (or has exceeded) the client's configured privacy budget."""


class PlannedRoundsDone(BudgetExceeded):
    """The member released updates in all its ``client.planned_rounds`` (its noise was calibrated for
    them) and, by default, stops joining: it declines every further plan, saying so."""


class AccountingError(PrivacyError):
    """The accountant cannot account for this event (unknown event, unsupported sampler)."""


class LedgerError(PrivacyError):
    """The privacy ledger is corrupt: a broken hash chain, a bad signature, a gap or reordering."""


class LedgerBudgetChanged(LedgerError):
    """The config's ``[privacy]`` budget is not the one the data's ledger was created with. A restart
    cannot fix it (exit 2), and a new ledger file would forget what the data already spent: the message
    says what to restore."""

    exit_code = 2


class LedgerHeaderTampered(LedgerError):
    """The ledger's header (client, identity key, budget, dataset) does not verify: its bytes, hash or
    self-signature were changed, or it is not a header this build can read."""


class ModelError(SecureFedError):
    """The base model or tokenizer could not be loaded or does not match."""

    exit_code = 2


class TransportError(SecureFedError):
    """A network or TLS failure in the daemons."""


class CertificateError(ConfigError):
    """A certificate problem that retrying cannot fix (another CA, expired or not yet valid, a host
    name the certificate does not name, revoked): the message says which, and what to change."""


class CertificateRevoked(CertificateError):
    """The federation operator revoked this certificate (it is on the CA-signed revocation list)."""


class AttemptEnded(ProtocolAbort):
    """The server ended the attempt this member works on (aborted it, or went on without this member): the
    member stops training it at its next step and releases nothing of it."""


class RankFailed(ModelError):
    """One of a member's training ranks (``[model] processes``) ended, hung or disagreed during an attempt:
    the attempt ends before anything is released or spent; the ranks restart for the next one."""

    exit_code = 1


class SimulationError(SecureFedError):
    """``securefed simulate`` cannot go on: every worker of its engine is gone, or a round cannot be planned."""
