"""The audit report fits a 1280 px screen and shows every member (issue 19). No browser here, so the
width is estimated the way a table lays out text when space is short: each column at least as wide as
the longest word of its cells (13 px sans-serif, ~7.2 px a character, plus padding; a table wider than
the sum of these is cut off, as the plan column was), cells spanning several columns aside. Three
members that spent the same budget the same way must still be three visible curves, and the RDP
cross-check must not read as a spend."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from privacy_helpers import DATASET_A, make_context, make_event

from securefed.crypto.keys import IdentityKeyPair
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.ledger import Ledger
from securefed.privacy.report import render_html
from securefed.privacy.report import build_report
from securefed.privacy.verify import verify_ledgers

CHAR_PX, PAD_PX, PAGE_PX = 7.2, 16, 1280


class _Tables(HTMLParser):
    """Per table: per column, the longest word (min-content) of its single-column cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[int, int]] = []
        self._cell: list[str] | None = None
        self._col = 0
        self._span = 1

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({})
        elif tag == "tr":
            self._col = 0
        elif tag in ("td", "th"):
            self._cell, self._span = [], int(dict(attrs).get("colspan", 1))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            if self._span == 1:
                w = max((len(word) for word in "".join(self._cell).split()), default=0)
                cols = self.tables[-1]
                cols[self._col] = max(cols.get(self._col, 0), w)
            self._col += self._span
            self._cell = None


def _members(tmp_path, names=("site-a", "site-b", "site-c")):
    paths = []
    for n in names:  # same budget, same noise, same rounds: identical curves
        key = IdentityKeyPair.generate()
        p = tmp_path / f"{n}.sqlite"
        with Ledger.open_or_create(p, key, client_id=n, budget=PrivacyBudget(target_epsilon=8.0, delta=1e-5),
                                   dataset=DATASET_A) as led:
            for r in (1, 2):
                led.append(make_event(client_id=n, round_id=r, noise_multiplier=1.1, steps=145, sample_rate=0.006938,
                                      context=make_context(federation_id="example-federation", federation_round=r,
                                                           dataset_fingerprint=DATASET_A, dataset_size=1153)))
        paths.append(p)
    return paths


def test_every_table_fits_a_1280_px_screen(tmp_path):
    html = render_html(build_report(verify_ledgers(_members(tmp_path))))
    parser = _Tables()
    parser.feed(html)
    widths = [sum(w * CHAR_PX + PAD_PX for w in cols.values()) for cols in parser.tables]
    assert parser.tables and max(widths) <= PAGE_PX - 80, widths  # the body has a 2em margin either side
    assert "max-width:1200px" in html and "overflow-wrap:anywhere" in html


def test_identical_curves_stay_visible_and_apart(tmp_path):
    html = render_html(build_report(verify_ledgers(_members(tmp_path))))
    svg = ET.fromstring(html[html.index("<svg"): html.index("</svg>") + len("</svg>")])
    ns = "{http://www.w3.org/2000/svg}"
    lines = svg.findall(f"{ns}polyline")
    assert len(lines) == 3
    assert len({ln.get("stroke-dasharray") for ln in lines}) == 3  # a pattern each
    assert len({ln.get("points") for ln in lines}) == 3  # not drawn on top of each other
    markers = [m for m in svg.iter() if m.tag in (f"{ns}circle", f"{ns}polygon") and m.find(f"{ns}title") is not None
               and "cumulative epsilon" in (m.find(f"{ns}title").text or "")]
    assert len(markers) == 6  # 3 members x 2 rounds, all present
    shapes = {(m.tag, m.get("points", "")[:0]) for m in markers}
    assert len({m.tag for m in markers}) == 2 and len(shapes) >= 2  # circles and polygons: not one shape


def test_the_rdp_cross_check_does_not_read_as_the_spend(tmp_path):
    res = verify_ledgers(_members(tmp_path, names=("site-a",)))
    (chk,) = [c for c in res[0].checks if c.name == "rdp-crosscheck"]
    assert "not of the spend" in chk.detail and "over all orders" not in chk.detail
    html = render_html(build_report(res))
    summary = html[html.index("<h2>Summary</h2>"): html.index("</table>", html.index("<h2>Summary</h2>"))]
    assert "RDP (Opacus)" not in summary and "spent &epsilon; (authoritative)" in summary
    assert "Cross-checks of the accounting (not the spend)" in html
