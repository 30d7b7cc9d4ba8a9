"""Helpers of the daemon tests (fast settings, recorders) and of the adversarial suite (a real member
daemon whose server is played by the test)."""

from __future__ import annotations

import sys
from pathlib import Path

for helpers in ("daemons", "adversarial"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / helpers))
