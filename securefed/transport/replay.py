"""Replay rejection by per-(client, session) sequence numbers.

Every request header carries ``sequence``, which a client increases by at least one per request
within a session. The server keeps the highest sequence accepted for each (client, session) and
refuses anything not above it, so a captured request cannot be played again within its session;
messages for another session are refused by the daemons' session-id check. Session ids are
fresh per round (they hash the round's keys), so the table is dropped per session with ``forget``.
"""

from __future__ import annotations

import threading

from securefed.errors import InvalidMessage


class SequenceGuard:
    """Thread-safe high-water marks: ``accept`` raises InvalidMessage on a replayed sequence."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._high: dict[tuple[str, bytes], int] = {}

    def accept(self, client_id: str, session_id: bytes, sequence: int) -> None:
        if sequence < 1:
            raise InvalidMessage("request sequence must start at 1")
        key = (client_id, bytes(session_id))
        with self._lock:
            if sequence <= self._high.get(key, 0):
                raise InvalidMessage("replayed or reordered request (sequence not increasing)")
            self._high[key] = sequence

    def forget(self, session_id: bytes) -> None:
        """Drop the marks of a finished session."""
        session_id = bytes(session_id)
        with self._lock:
            for key in [k for k in self._high if k[1] == session_id]:
                del self._high[key]
