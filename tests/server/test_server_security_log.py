"""Security alerts cannot be flooded or forged into the operator's view (issue 17, attacks 3 and 4).

* A flood from one source (200 failed registrations from one certified member) writes at most
  ``PER_SOURCE_PER_WINDOW`` lines and fsyncs, is counted ("200 x failed registration from member-3 in
  the last hour"), and does not push any other source out of ``securefed status``; the control (no
  limit, the newest-N view) shows the flood displacing everything else.
* The same holds per peer address (several certificates on one host), and the file's size is bounded.
* Escape sequences, bidi overrides and newlines in a peer's text reach no sink raw: the terminal
  (status), log lines (text and JSON), the HTML and JSON audit report, ``status --json``. Each sink has
  a control showing the raw bytes would get through without the sanitiser.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from securefed.logs import JsonFormatter, TextFormatter
from securefed.privacy import report as report_mod
from securefed.server import security_log as sl
from securefed.server import status_view
from securefed.server.roundlog import RoundLog
from securefed.server.security_log import PER_SOURCE_PER_WINDOW, SecurityLog, read_alerts, summary

HOSTILE = "ok\x1b[2J\x1b[H\x1b]0;owned\x07 fine\u202eeulav\nSECURITY 2030-01-01 00:00:00  forged (member admin): all clear"
RAW_MARKERS = ("\x1b", "\u202e", "\x07")


def _lines(state: Path) -> list[str]:
    return (state / sl.ALERTS_FILE).read_text().splitlines()


def _strings(value) -> str:
    """What a JSON consumer would print: every string value, parsed."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_strings(k) + " " + _strings(v) for k, v in value.items())
    if isinstance(value, list):
        return " ".join(_strings(v) for v in value)
    return ""


def _status_text(state: Path) -> str:
    RoundLog(state / "rounds.sqlite").close()  # status reads the round log too
    out = io.StringIO()
    assert status_view.show(state, 1, last=5, as_json=False, watch=None, out=out) == 0
    return out.getvalue()


def _flood(log: SecurityLog) -> None:
    log.record(client="alice", kind="digest mismatch", detail="adapter differs", source="member", address="10.0.0.1")
    for _ in range(200):
        log.record(client="member-3", kind="failed registration", source="server", address="10.0.0.3",
                   detail="registered with an identity key other than the one its certificate binds")


def test_a_flood_from_one_member_is_counted_not_written_and_does_not_hide_other_sources(tmp_path):
    log = SecurityLog(tmp_path)
    _flood(log)
    assert len(_lines(tmp_path)) == 1 + PER_SOURCE_PER_WINDOW
    groups = {(g["client"], g["kind"]): g for g in summary(tmp_path)["groups"]}
    assert groups[("member-3", "failed registration")]["count"] == 200
    assert groups[("alice", "digest mismatch")]["count"] == 1
    text = _status_text(tmp_path)
    assert "[200 x failed registration from member-3 in the last hour]" in text
    assert "digest mismatch (reported by alice): adapter differs" in text


def test_control_without_the_limit_the_flood_fills_the_file_and_the_newest_view(tmp_path, monkeypatch):
    monkeypatch.setattr(sl, "PER_SOURCE_PER_WINDOW", 10**9)
    log = SecurityLog(tmp_path)
    _flood(log)
    assert len(_lines(tmp_path)) == 201
    assert {a["client"] for a in read_alerts(tmp_path, limit=20)} == {"member-3"}  # the old newest-20 view


def test_one_address_is_limited_across_the_certificates_it_uses(tmp_path):
    log = SecurityLog(tmp_path)
    for i in range(60):  # one host, many certified names (say, stolen bundles)
        log.record(client=f"member-{i}", kind="plan refused", detail="x", source="member", address="192.0.2.7")
    assert len(_lines(tmp_path)) == PER_SOURCE_PER_WINDOW
    by_address = summary(tmp_path)["by_address"]
    assert by_address == [{"address": "192.0.2.7", "kind": "plan refused", "count": 60}]
    assert "60 x plan refused from address 192.0.2.7 in the last hour" in _status_text(tmp_path)


def test_the_alert_file_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(sl, "MAX_FILE_BYTES", 4096)
    log = SecurityLog(tmp_path)
    for i in range(200):  # every source new: nothing is rate-limited, only the size bounds it
        log.record(client=f"m{i}", kind=f"k{i}", detail="d" * 200, source="member")
    total = sum((tmp_path / n).stat().st_size for n in (sl.ALERTS_FILE, sl.ALERTS_FILE + ".1"))
    assert total <= 2 * 4096
    assert read_alerts(tmp_path, limit=1)[0]["client"] == "m199"


# --- sanitising: one test per sink, each with its control -------------------------------------------

def test_terminal_status_prints_peer_text_inert_on_one_line(tmp_path, monkeypatch):
    SecurityLog(tmp_path).record(client="member-3", kind="plan refused", detail=HOSTILE, source="member")
    # The file itself is already clean; write a raw line too, as an older version would have.
    with (tmp_path / sl.ALERTS_FILE).open("a") as f:
        f.write(json.dumps({"at": 1.0, "source": "member", "client": "old", "kind": "k", "detail": HOSTILE}) + "\n")
    text = _status_text(tmp_path)
    assert not any(m in text for m in RAW_MARKERS)
    assert "\\x1b[2J" in text and "\\u202e" in text  # visible, so the operator sees something was there
    forged = [ln for ln in text.splitlines() if "forged (member admin)" in ln]
    assert forged and all("(reported by " in ln for ln in forged)  # never a line of its own
    monkeypatch.setattr(status_view, "clean", lambda s, max_len=None: s)  # control: the sink unguarded
    monkeypatch.setattr(sl, "clean_tree", lambda v: v)
    assert "\x1b[2J" in _status_text(tmp_path)


def test_status_json_carries_no_raw_control_characters(tmp_path, monkeypatch):
    with (tmp_path / sl.ALERTS_FILE).open("w") as f:
        f.write(json.dumps({"at": 1.0, "source": "member", "client": "m", "kind": "k", "detail": HOSTILE}) + "\n")
    RoundLog(tmp_path / "rounds.sqlite").close()
    out = io.StringIO()
    status_view.show(tmp_path, 1, last=5, as_json=True, watch=None, out=out)
    assert not any(m in _strings(json.loads(out.getvalue())) for m in RAW_MARKERS)
    monkeypatch.setattr(status_view, "clean_tree", lambda v: v)  # control
    monkeypatch.setattr(sl, "clean_tree", lambda v: v)
    out = io.StringIO()
    status_view.show(tmp_path, 1, last=5, as_json=True, watch=None, out=out)
    assert "\x1b" in _strings(json.loads(out.getvalue()))


def _record(**fields) -> logging.LogRecord:
    rec = logging.LogRecord("securefed.server", logging.ERROR, __file__, 1, "refused: %s", (HOSTILE,), None)
    rec.securefed_fields = fields  # type: ignore[attr-defined]
    return rec


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_log_lines_carry_no_raw_control_characters(formatter, monkeypatch):
    line = formatter.format(_record(reason=HOSTILE, nested={"d": [HOSTILE]}))
    rendered = _strings(json.loads(line)) if isinstance(formatter, JsonFormatter) else line
    assert "\n" not in line and "\n" not in rendered and not any(m in rendered for m in RAW_MARKERS)
    import securefed.logs as logs_mod  # control: the formatters without the sanitiser
    monkeypatch.setattr(logs_mod, "clean", lambda s, max_len=None: s)
    monkeypatch.setattr(logs_mod, "clean_tree", lambda v: v)
    line = formatter.format(_record(reason=HOSTILE))
    rendered = _strings(json.loads(line)) if isinstance(formatter, JsonFormatter) else line
    assert "\x1b" in rendered


def test_audit_report_html_and_json_carry_no_raw_control_characters(tmp_path, monkeypatch):
    hostile = {"format": "x", "clients": [{"client_id": HOSTILE, "notes": [HOSTILE]}]}
    monkeypatch.setattr(report_mod, "build_report", lambda results, round_log=None, evaluations=(): hostile)
    monkeypatch.setattr(report_mod, "render_html", lambda r: "<p>" + report_mod.html.escape(r["clients"][0]["client_id"]) + "</p>")
    html_path, json_path = report_mod.write_report([object()], tmp_path)  # type: ignore[list-item]
    for path in (html_path, json_path):
        text = path.read_text()
        text = _strings(json.loads(text)) if path.suffix == ".json" else text
        assert not any(m in text for m in RAW_MARKERS), path.name
    monkeypatch.setattr(report_mod, "clean_tree", lambda v: v)  # control
    html_path, _ = report_mod.write_report([object()], tmp_path)  # type: ignore[list-item]
    assert "\u202e" in html_path.read_text()
