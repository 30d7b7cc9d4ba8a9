"""Observers injected into a member daemon: fault points, released updates, round outcomes.

The production daemon runs with ``MemberHooks()``, whose methods do nothing; it keeps no history
and no copy of what it released. Tests and embedding programs subclass it and pass an instance to
``ClientDaemon(hooks=...)`` to watch a member (compare the secure aggregate with the plaintext
updates a member released, make a member go silent at a point, count declines). Kill-at-a-point
crash tests use ``securefed.faults`` (an environment variable), not a hook.
"""

from __future__ import annotations

import numpy as np


class MemberHooks:
    def at(self, point: str, attempt: int) -> None:
        """Called at each named point of a round (``after_accept``, ``before_masked_input``, ...).
        Raising a securefed session error (``ProtocolAbort``) ends the member's part in that session
        without telling the server, as a crash or a lost link would."""

    def released(self, attempt: int, payload: np.ndarray) -> None:
        """The plaintext update this member is about to protect and release (after its ledger entry)."""

    def outcome(self, attempt: int, outcome: str, **fields: object) -> None:
        """What became of an attempt, for this member: ``declined``, ``aborted``, ``completed``, or
        ``refused`` (a replayed plan, not acted on)."""
