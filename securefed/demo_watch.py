"""What ``securefed demo`` shows of its member processes: training progress while they run, and at the end
each member's time per DP-SGD step (from its own ``local training done`` log events) and peak resident
memory (Linux ``VmHWM``, read from ``/proc`` while the process lives)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set so far (KiB), or None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class MemberWatch:
    logs: Path
    show_progress: bool = True  # training steps as they happen (a real model's rounds take minutes)
    peak_kib: dict[str, int] = field(default_factory=dict)
    step_s: dict[str, list[float]] = field(default_factory=dict)  # seconds per DP step, one value per round
    _offsets: dict[str, int] = field(default_factory=dict)

    def _events(self, name: str) -> list[dict]:
        path = self.logs / f"{name}.log"
        try:
            with open(path, "rb") as f:
                f.seek(self._offsets.get(name, 0))
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._offsets[name] = self._offsets.get(name, 0) + end
        out = []
        for line in data[:end].decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def poll(self, procs: dict[str, subprocess.Popen]) -> list[str]:
        """Lines worth showing since the last call; records memory and step times on the way."""
        lines = []
        for name, proc in procs.items():
            kib = peak_rss_kib(proc.pid) if proc.poll() is None else None
            if kib:
                self.peak_kib[name] = max(self.peak_kib.get(name, 0), kib)
            for ev in self._events(name):
                kind = ev.get("event")
                if kind == "training" and "done" in ev and self.show_progress:
                    lines.append(f"{name}: training attempt {ev.get('attempt')}: step {ev['done']}/{ev.get('total')}"
                                 + (f", loss {ev['loss']:.3f}" if isinstance(ev.get("loss"), float) else ""))
                elif kind == "local training done" and ev.get("steps"):
                    self.step_s.setdefault(name, []).append(float(ev.get("seconds", 0.0)) / int(ev["steps"]))
                elif kind == "leaving the attempt":
                    lines.append(f"{name}: left attempt {ev.get('attempt')}: {ev.get('reason')}")
        return lines

    def summary(self) -> list[str]:
        out = []
        for name in sorted(set(self.peak_kib) | set(self.step_s)):
            steps = self.step_s.get(name, [])
            rss = self.peak_kib.get(name)
            out.append(f"  {name}: " + ", ".join(filter(None, [
                f"DP-SGD {sum(steps) / len(steps):.2f} s per step (mean of {len(steps)} round(s))" if steps else "",
                f"peak RSS {rss / 1024:.0f} MiB" if rss else ""])))
        return out
