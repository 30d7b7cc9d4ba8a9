"""``securefed eval --json`` results read back for the audit report (pure: no model, no torch).

The report's federation context shows what the federation bought with the privacy it spent: the
task metric and held-out perplexity of each evaluated model, in the order given (the base model or
round-0 adapter first, the final adapter last), with the change from the first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from securefed.errors import InvalidInput

_KEYS = ("model", "adapter", "data", "records", "loss", "perplexity", "metric", "task_metric", "metrics")


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def read_evaluation(path: str | Path) -> dict:
    """One eval result, checked for the fields the report shows (``InvalidInput`` naming the file)."""
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"--metrics {path}: file not found") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--metrics {path}: not JSON ({type(exc).__name__}); give the output of "
                           "`securefed eval --json`") from None
    if not isinstance(data, dict) or any(k not in data for k in _KEYS):
        raise InvalidInput(f"--metrics {path}: not a `securefed eval --json` result (needs {', '.join(_KEYS)})")
    metrics = data["metrics"] if isinstance(data["metrics"], dict) else {}
    return {"source": str(path), "model": str(data["model"]), "adapter": data["adapter"], "data": str(data["data"]),
            "records": int(data["records"]) if isinstance(data["records"], int) else None,
            "loss": _number(data["loss"]), "perplexity": _number(data["perplexity"]),
            "metric": data["metric"] if isinstance(data["metric"], str) else None,
            "task_metric": _number(data["task_metric"]),
            "metrics": {str(k): v for k, v in metrics.items() if _number(v) is not None}}


def read_evaluations(paths: list[str | Path]) -> list[dict]:
    """Every result in order, each with its change from the first (same data and metric only)."""
    out = [read_evaluation(p) for p in paths]
    if out:
        first = out[0]
        for e in out:
            same = e["data"] == first["data"] and e["metric"] == first["metric"]
            e["task_metric_change"] = (e["task_metric"] - first["task_metric"] if same and None not in
                                       (e["task_metric"], first["task_metric"]) else None)
            e["perplexity_change"] = (e["perplexity"] - first["perplexity"] if e["data"] == first["data"] and None
                                      not in (e["perplexity"], first["perplexity"]) else None)
    return out
