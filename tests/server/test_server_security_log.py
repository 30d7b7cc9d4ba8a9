"""Security alerts on the server: kept (one JSON line each, newest shown), and a member cannot use its
reports to fill the server's disk."""

from __future__ import annotations

from securefed.server.security_log import MEMBER_ALERTS_PER_WINDOW, SecurityLog, read_alerts


def test_a_member_flooding_reports_is_recorded_only_up_to_the_hourly_bound(tmp_path):
    log = SecurityLog(tmp_path)
    for i in range(MEMBER_ALERTS_PER_WINDOW + 50):
        log.record(client="mallory", kind="plan refused", detail=f"report {i}", source="member", attempt=i + 1)
    # Another member's report and what the server itself sees are still kept (the bound is per member).
    log.record(client="alice", kind="digest mismatch", detail="adapter", source="member")
    log.record(client="mallory", kind="ledger conflict", detail="entry 0 differs", source="server", attempt=9)
    lines = (tmp_path / "security-alerts.jsonl").read_text().splitlines()
    assert len(lines) == MEMBER_ALERTS_PER_WINDOW + 2
    shown = read_alerts(tmp_path, limit=3)
    assert [(a["client"], a["source"]) for a in shown] == [("mallory", "member"), ("alice", "member"),
                                                           ("mallory", "server")]
    assert shown[0]["detail"] == f"report {MEMBER_ALERTS_PER_WINDOW - 1}"
