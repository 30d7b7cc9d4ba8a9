"""The daemon tests' helpers (fast settings, recorders of what each member released)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemons"))
