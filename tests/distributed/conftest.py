"""The member harness of the adversarial suite (a real daemon, its server played by the test)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adversarial"))
