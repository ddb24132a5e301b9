"""The HTML report: structure and escaping checked on the markup, behaviour in Chromium.

The markup tests parse the file with the standard library, so they run everywhere. The
browser tests need Debian's `chromium` and `chromium-driver` (installed by `.ci/run`) and
skip without them: sorting, filtering and anchors are JavaScript and CSS behaviour that
only a real browser proves, and the page's Content-Security-Policy would silently
disable the script if its hash were wrong.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import DUMPS, REPO, SAMPLES

from pooltagscan.report import html as report_html
from pooltagscan.report.model import (
    ATTRIBUTED,
    KNOWN,
    UNCONFIRMED,
    UNKNOWN,
    Candidate,
    Report,
    ReportRow,
    Sample,
)
from pooltagscan.stats import COLUMNS

SHA = "0f" * 32
EVIL_TAG = "<sc\x3e"  # "<sc>"
EVIL_DRIVER = 'evil"<script>window.pwned=1</script>.sys'
EVIL_DESCRIPTION = (
    "<script>window.pwned=2</script> & \"quoted\" 'single' <img src=x onerror=pwned=3>"
)
EVIL_OWNER = "O'Brien & <b>Co</b>"

VOID = {"meta", "input", "br", "img", "link", "hr", "source", "area", "base", "col", "wbr"}


# --- a small DOM over html.parser -------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str, attrs: dict[str, str] | None = None) -> list[Node]:
        """Descendants (and self) named `tag` whose attributes include `attrs`."""
        want = (attrs or {}).items()
        return [
            n for n in self.iter() if n.tag == tag and all(n.attrs.get(k) == v for k, v in want)
        ]

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())


class TreeBuilder(HTMLParser):
    """Builds a Node tree; character references are decoded, as a browser would."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root
        self.declarations: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.declarations.append(decl)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag: str) -> None:
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"stray </{tag}>"
        assert node is self.current, f"</{tag}> closes <{self.current.tag}> implicitly"
        self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(markup: str) -> Node:
    builder = TreeBuilder()
    builder.feed(markup)
    builder.close()
    assert builder.current is builder.root, f"<{builder.current.tag}> never closed"
    assert builder.declarations == ["DOCTYPE html"]
    return builder.root


# --- a report built by hand -------------------------------------------------------------


def counters(np_allocs: int, np_bytes: int, p_allocs: int, p_bytes: int, free: int, fbytes: int):
    c = dict.fromkeys(COLUMNS, 0)
    c.update(
        nonpaged_allocs=np_allocs,
        nonpaged_bytes=np_bytes,
        paged_allocs=p_allocs,
        paged_bytes=p_bytes,
        free_allocs=free,
        free_bytes=fbytes,
        total_allocs=np_allocs + p_allocs + free,
        total_bytes=np_bytes + p_bytes + fbytes,
    )
    return c


def hand_report(growth: bool = True) -> Report:
    """Every status, candidates, samples with previews, and hostile strings everywhere."""
    evil_cand = Candidate(
        EVIL_DRIVER, "/drv/" + EVIL_DRIVER, "x64", "ExAllocatePool2", 0x1A2B, "direct", "high"
    )
    good_cand = Candidate(
        "netfilt.sys", "/drv/netfilt.sys", "x64", "ExAllocatePoolWithTag", 0x40, "wrapper", "high"
    )
    yara_cand = Candidate(
        "other.sys", "/drv/other.sys", "x86", "ExAllocatePool", 0x99, "yara", "low"
    )
    rows = [
        ReportRow(
            EVIL_TAG,
            counters(3, 480, 1, 64, 1, 32),
            ATTRIBUTED,
            candidates=[evil_cand],
            samples=[
                Sample(
                    0x1000,
                    160,
                    "nonpaged",
                    "allocated",
                    "high",
                    b"\x00\x00\x0a\x02<sc>&\"'" + bytes(range(7)),
                ),
                Sample(0x2040, 64, "paged", "free", "medium"),
            ],
        ),
        ReportRow(
            "NfLt",
            counters(10, 2000, 0, 0, 0, 0),
            ATTRIBUTED,
            candidates=[good_cand, yara_cand],
            samples=[
                Sample(
                    0xFFFF800012345670,
                    200,
                    "nonpaged",
                    "allocated",
                    "high",
                    bytes(range(0x41, 0x61)),
                )
            ],
        ),
        ReportRow("Zz\\x01q", counters(0, 0, 2, 96, 0, 0), UNKNOWN, description=EVIL_DESCRIPTION),
        ReportRow("Proc", counters(5, 6000, 0, 0, 2, 2400), KNOWN, "nt!ps", "process object"),
        ReportRow("Irp ", counters(1, 272, 0, 0, 0, 0), KNOWN, EVIL_OWNER, "I/O request packet"),
    ]
    if growth:
        for row, (ga, gb) in zip(rows, [(4, 544), (-2, -400), (0, 0), (1, 1200), (1, 272)]):
            row.growth_allocs, row.growth_bytes = ga, gb
    meta = {
        "dump": '/cases/"evil" <b & dump.raw',
        "format": "raw",
        "architecture": None,
        "layout": "x64",
        "pooltype_encoding": "vista",
        "scanned_bytes": 4 << 20,
        "evidence": {"x64 chains": 12},
        "size": 4 << 20,
        "sha256": SHA,
        "scan_seconds": 0.25,
        "baseline": "old.json" if growth else None,
    }
    drivers = [{"driver": EVIL_DRIVER, "path": "/drv/x", "arch": "x64", "tags": [EVIL_TAG]}]
    return Report(meta, rows, {}, drivers, problems=["bad.sys: <not a driver> & broken"])


@pytest.fixture(scope="module")
def page() -> tuple[str, Node]:
    markup = report_html.render_html(hand_report())
    return markup, parse(markup)


def by_id(root: Node, ident: str) -> Node:
    found = [n for n in root.iter() if n.attrs.get("id") == ident]
    assert len(found) == 1, ident
    return found[0]


def table_rows(root: Node) -> list[Node]:
    (tbody,) = by_id(root, "tags").find_all("tbody")
    return [c for c in tbody.children if isinstance(c, Node)]


# --- markup tests -----------------------------------------------------------------------


def assert_self_contained(markup: str) -> Node:
    """No element or attribute that could fetch anything; every link stays in the page."""
    root = parse(markup)
    nodes = list(root.iter())
    fetching = {"link", "img", "iframe", "object", "embed", "base", "frame", "audio", "video"}
    assert not {n.tag for n in nodes} & fetching
    for n in nodes:
        for name, value in n.attrs.items():
            assert name not in {"src", "srcset", "action", "xlink:href", "background"}, n.tag
            if name == "href":
                assert value.startswith("#"), value
    # the only absolute URL is the SVG namespace, an identifier the browser never fetches
    assert set(re.findall(r"\w+://[^\s\"'<>)]*", markup)) == {"http://www.w3.org/2000/svg"}
    (style,) = root.find_all("style")
    assert "url(" not in style.text() and "@import" not in style.text()
    (script,) = root.find_all("script")
    assert script.attrs == {}
    return root


def test_self_contained(page):
    assert_self_contained(page[0])


def test_content_security_policy_allows_exactly_the_inline_blocks(page):
    _, root = page
    (meta,) = root.find_all("meta", {"http-equiv": "Content-Security-Policy"})
    (style,) = root.find_all("style")
    (script,) = root.find_all("script")

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert meta.attrs["content"] == (
        f"default-src 'none'; style-src {digest(style.text())}; "
        f"script-src {digest(script.text())}; base-uri 'none'; form-action 'none'"
    )


def test_hostile_strings_are_text_not_markup(page):
    markup, root = page
    assert "<sc>" not in markup and "<script>window" not in markup and "<img" not in markup
    assert len(root.find_all("script")) == 1
    rows = table_rows(root)
    assert [r.attrs["data-tag"] for r in rows] == [EVIL_TAG, "NfLt", "Zz\\x01q", "Proc", "Irp "]
    cells = [c for c in rows[0].children if isinstance(c, Node)]
    assert cells[0].text() == EVIL_TAG
    assert [li.find_all("b")[0].text() for li in cells[-1].find_all("li")] == [EVIL_DRIVER]
    unknown_cells = [c for c in rows[2].children if isinstance(c, Node)]
    assert unknown_cells[-2].text() == EVIL_DESCRIPTION
    known_cells = [c for c in rows[4].children if isinstance(c, Node)]
    assert known_cells[-3].text() == EVIL_OWNER
    assert root.find_all("title")[0].text() == 'pooltagscan report: "evil" <b & dump.raw'
    assert by_id(root, "problems").find_all("li")[0].text() == "bad.sys: <not a driver> & broken"
    assert (
        rows[0].attrs["data-filter"]
        == "\n".join(
            [
                EVIL_TAG,
                "attributed",
                "",
                "",
                EVIL_DRIVER,
                "/drv/" + EVIL_DRIVER,
                "ExAllocatePool2",
                "direct",
            ]
        ).lower()
    )


def test_control_characters_never_reach_the_markup():
    report = hand_report()
    report.rows[3].description = "nul\x00 bell\x07 tab\t del\x7f c1\x85 end"
    root = parse(report_html.render_html(report))
    cells = [c for c in table_rows(root)[3].children if isinstance(c, Node)]
    assert cells[-2].text() == "nul\ufffd bell\ufffd tab\t del\ufffd c1\ufffd end"


def test_every_unknown_and_attributed_tag_has_a_linked_section(page):
    _, root = page
    sections = {
        s.attrs["id"]: s.attrs["data-tag"]
        for s in root.find_all("section")
        if "tagpage" in s.classes()
    }
    assert sections == {
        "tag-3c73633e": EVIL_TAG,
        "tag-4e664c74": "NfLt",
        "tag-5a7a5c78303171": "Zz\\x01q",
    }
    links = {}
    for row in table_rows(root):
        first = next(c for c in row.children if isinstance(c, Node))
        anchors = first.find_all("a")
        links[row.attrs["data-tag"]] = anchors[0].attrs["href"] if anchors else None
    assert links == {
        EVIL_TAG: "#tag-3c73633e",
        "NfLt": "#tag-4e664c74",
        "Zz\\x01q": "#tag-5a7a5c78303171",
        "Proc": None,
        "Irp ": None,
    }


def test_tag_section_lists_samples_candidates_and_hex(page):
    _, root = page
    section = by_id(root, "tag-3c73633e")
    tables = section.find_all("table")
    cand_rows = tables[0].find_all("tbody")[0].find_all("tr")
    assert [[td.text() for td in tr.find_all("td")] for tr in cand_rows] == [
        [EVIL_DRIVER, "x64", "ExAllocatePool2", "+0x1a2b", "high", "direct", "/drv/" + EVIL_DRIVER]
    ]
    sample_rows = tables[1].find_all("tbody")[0].find_all("tr")
    assert [[td.text() for td in tr.find_all("td")] for tr in sample_rows] == [
        ["0x1000", "160", "nonpaged", "allocated", "high"],
        ["0x2040", "64", "paged", "free", "medium"],
    ]
    assert [h.text() for h in section.find_all("h4")] == [
        "Candidate drivers",
        "Allocations (2 of 5)",
        "First bytes",
    ]
    (pre,) = section.find_all("pre")
    assert pre.text() == (
        "000000001000  00 00 0a 02 3c 73 63 3e  26 22 27 00 01 02 03 04  ....<sc>&\"'.....\n"
        "000000001010  05 06                                             .."
    )
    big = by_id(root, "tag-4e664c74")
    assert big.find_all("pre")[0].text().splitlines() == [
        "ffff800012345670  41 42 43 44 45 46 47 48  49 4a 4b 4c 4d 4e 4f 50  ABCDEFGHIJKLMNOP",
        "ffff800012345680  51 52 53 54 55 56 57 58  59 5a 5b 5c 5d 5e 5f 60  QRSTUVWXYZ[\\]^_`",
    ]
    no_samples = by_id(root, "tag-5a7a5c78303171")
    assert no_samples.find_all("p")[-2].text() == "No allocation addresses were kept for this tag."


def test_summary_facts_and_counts(page):
    _, root = page
    assert by_id(root, "sha256").text() == SHA
    facts = {dd.attrs["data-fact"]: dd.text() for dd in root.find_all("dd")}
    assert facts == {
        "dump": '/cases/"evil" <b & dump.raw',
        "format": "raw",
        "architecture": "unknown",
        "layout": "x64 (PoolType encoding vista)",
        "size": "4.0 MiB (4,194,304 bytes)",
        "sha256": SHA,
        "scan": "0.25 s, 4.0 MiB scanned",
        "evidence": "x64 chains 12",
        "baseline": "old.json",
    }
    cards = {
        div.attrs["data-count"]: div.find_all("b")[0].text()
        for div in root.find_all("div")
        if "card" in div.classes()
    }
    assert cards == {
        "tags": "5",
        "attributed to a driver": "2",
        "unknown": "1",
        "in the tag database": "2",
        "unconfirmed (low confidence only)": "0",
        "live allocations": "22",
        "in live allocations": "8.7 KiB",
        "of them in big-pool allocations": "0 B",
        "drivers analysed": "1",
    }


def test_table_columns_with_and_without_baseline(page):
    _, root = page
    heads = [th.text() for th in by_id(root, "tags").find_all("th")]
    assert heads == [
        "Tag", "Status", "Allocs", "Bytes", "Nonpaged", "Paged", "Free", "Big bytes",
        "Growth allocs", "Growth bytes", "Owner", "Description", "Candidate drivers",
    ]  # fmt: skip
    first = [c for c in table_rows(root)[1].children if isinstance(c, Node)]
    assert [c.text() for c in first[:10]] == [
        "NfLt",
        "attributed",
        "10",
        "2,000",
        "10",
        "0",
        "0",
        "0",
        "-2",
        "-400",
    ]
    assert [c.attrs.get("data-sort") for c in first[:10]] == [
        "NfLt",
        "0",
        "10",
        "2000",
        "10",
        "0",
        "0",
        "0",
        "-2",
        "-400",
    ]

    plain = parse(report_html.render_html(hand_report(growth=False)))
    heads = [th.text() for th in by_id(plain, "tags").find_all("th")]
    assert heads == [
        "Tag", "Status", "Allocs", "Bytes", "Nonpaged", "Paged", "Free", "Big bytes",
        "Owner", "Description", "Candidate drivers",
    ]  # fmt: skip


def test_charts_show_top_tags_split_by_pool(page):
    _, root = page
    by_bytes, by_count = root.find_all("svg")
    assert [t.text() for t in by_bytes.find_all("text") if "lbl" in t.classes()] == [
        "Proc", "NfLt", EVIL_TAG, "Irp ", "Zz\\x01q"
    ]  # fmt: skip
    assert [t.text() for t in by_count.find_all("text") if "lbl" in t.classes()] == [
        "NfLt", "Proc", EVIL_TAG, "Zz\\x01q", "Irp "
    ]  # fmt: skip
    # the attributed tag's bar: nonpaged 480 then paged 64, one legend swatch each
    titles = [g.find_all("title")[0].text() for g in by_bytes.find_all("g")]
    assert titles[2] == "<sc>: 544 B (nonpaged 480 B, paged 64 B)"
    legend = [t.text() for t in by_bytes.find_all("text") if not t.classes()]
    assert legend == ["nonpaged", "paged"]
    assert [t.text() for t in by_bytes.find_all("text") if "tick" in t.classes()] == [
        "0", "2 KiB", "4 KiB", "6 KiB"
    ]  # fmt: skip


def test_chart_never_exceeds_fifteen_bars():
    report = hand_report(growth=False)
    report.rows = [
        ReportRow(f"T{i:03d}", counters(i + 1, 16 * (i + 1), 0, 0, 0, 0), UNKNOWN)
        for i in range(40)
    ]
    svg = parse(report_html.render_html(report)).find_all("svg")[0]
    labels = [t.text() for t in svg.find_all("text") if "lbl" in t.classes()]
    assert labels == [f"T{i:03d}" for i in range(39, 24, -1)]


def test_axis_steps_read_well():
    cases = [(24166, True), (151, False), (3, False), (1500, True), (5 << 20, True)]
    got = []
    for top, binary in cases:
        step, tick = report_html.axis(top, binary)
        got.append((step, [tick(i * step) for i in range(4)]))
    assert got == [
        (10240, ["0", "10 KiB", "20 KiB", "30 KiB"]),
        (50, ["0", "50", "100", "150"]),
        (1, ["0", "1", "2", "3"]),
        (512, ["0", "0.5 KiB", "1 KiB", "1.5 KiB"]),
        (2 << 20, ["0", "2 MiB", "4 MiB", "6 MiB"]),
    ]


def test_empty_report_renders():
    report = Report({"dump": "empty.raw", "sha256": SHA}, [], {}, [])
    root = parse(report_html.render_html(report))
    assert table_rows(root) == []
    assert [p.text() for p in root.find_all("p") if "muted" in p.classes()] == [
        "No live allocations.",
        "No live allocations.",
        "Every tag in this dump is in the tag database.",
    ]


def big_and_unconfirmed_report() -> Report:
    """A tag with big-pool allocations, an unknown one and an unconfirmed one."""
    mixed = counters(2, 0x100 + 0x3000, 1, 0x40, 0, 0)
    mixed.update(small_allocs=2, small_bytes=0x140, big_allocs=1, big_bytes=0x3000)
    mixed.update(high_confidence=3)
    shaky = counters(1, 0x50, 0, 0, 0, 0)
    shaky.update(small_allocs=1, small_bytes=0x50, low_confidence=1)
    odd = counters(0, 0, 1, 0x30, 0, 0)
    odd.update(small_allocs=1, small_bytes=0x30, medium_confidence=1)
    rows = [
        ReportRow("Mixd", mixed, UNKNOWN),
        ReportRow("Oddt", odd, UNKNOWN),
        ReportRow("Shak", shaky, UNCONFIRMED),
    ]
    return Report({"dump": "b.raw", "sha256": SHA}, rows, {}, [])


def test_big_pool_bytes_and_the_unconfirmed_group():
    root = parse(report_html.render_html(big_and_unconfirmed_report()))
    cards = {
        div.attrs["data-count"]: div.find_all("b")[0].text()
        for div in root.find_all("div")
        if "card" in div.classes()
    }
    assert cards["unknown"] == "2"
    assert cards["unconfirmed (low confidence only)"] == "1"
    assert cards["in live allocations"] == "12.4 KiB"  # 0x3140 + 0x50 + 0x30
    assert cards["of them in big-pool allocations"] == "12.0 KiB"
    rows = table_rows(root)
    assert [r.attrs["data-tag"] for r in rows] == ["Mixd", "Oddt", "Shak"]
    cells = [[c for c in r.children if isinstance(c, Node)] for r in rows]
    assert [c[1].text() for c in cells] == ["unknown", "unknown", "unconfirmed"]
    assert [c[1].attrs["data-sort"] for c in cells] == ["1", "1", "3"]
    assert [c[7].text() for c in cells] == ["12,288", "0", "0"]  # Big bytes
    badge = cells[2][1].find_all("span")[0]
    assert badge.classes() == {"badge", "unconfirmed"}
    sections = [s.attrs["data-tag"] for s in root.find_all("section") if "tagpage" in s.classes()]
    assert sections == ["Mixd", "Oddt", "Shak"]
    mixed_page = by_id(root, "tag-4d697864")
    assert mixed_page.find_all("p")[0].text() == (
        "3 live allocations, 12.3 KiB (2 nonpaged, 1 paged), 0 free; "
        "2 small (320 B) and 1 big-pool (12.0 KiB) live allocations"
    )
    assert by_id(root, "tag-4f646474").find_all("p")[0].text() == (
        "1 live allocations, 48 B (0 nonpaged, 1 paged), 0 free"
    )
    by_bytes = root.find_all("svg")[0]
    titles = [g.find_all("title")[0].text() for g in by_bytes.find_all("g")]
    assert titles[0] == "Mixd: 12.3 KiB (nonpaged 12.2 KiB, paged 64 B); big pool 12.0 KiB"
    assert titles[1] == "Shak: 80 B (nonpaged 80 B)"


# --- the real report in Chromium ------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DUMP = DUMPS / "win10-1809-x64.raw"
BAD_DRIVER = "samples/drivers/bad/usermode_x64.dll"


@pytest.fixture(scope="module")
def real_report(tmp_path_factory) -> tuple[Path, dict]:
    """`report --html` on a sample dump and every sample driver, the way a user runs it."""
    out = tmp_path_factory.mktemp("html") / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "pooltagscan", "report", str(DUMP.relative_to(REPO)),
         "--drivers", str((SAMPLES / "drivers").relative_to(REPO)),
         "--html", str(out), "--format", "json", "-q"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    # samples/drivers/bad holds a user-mode DLL on purpose: a folder walk passes over it
    # (counted on stderr, silenced here by -q), so no problem and exit 0.
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["problems"] == []
    return out, data


def test_real_report_markup(real_report):
    """The file `report --html` writes: self-contained, one row and link per tag."""
    path, data = real_report
    root = assert_self_contained(path.read_text(encoding="utf-8"))
    assert by_id(root, "sha256").text() == hashlib.sha256(DUMP.read_bytes()).hexdigest()
    rows = table_rows(root)
    assert [r.attrs["data-tag"] for r in rows] == [t["tag"] for t in data["tags"]]
    investigate = [t for t in data["tags"] if t["status"] in (ATTRIBUTED, UNKNOWN)]
    sections = [s for s in root.find_all("section") if "tagpage" in s.classes()]
    assert [s.attrs["data-tag"] for s in sections] == [t["tag"] for t in investigate]
    assert [s.attrs["id"] for s in sections] == [
        "tag-" + t["tag"].encode().hex() for t in investigate
    ]
    links = [r.find_all("a") for r in rows]
    assert [a[0].attrs["href"] if a else None for a in links] == [
        "#tag-" + t["tag"].encode().hex() if t in investigate else None for t in data["tags"]
    ]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium / chromium-driver not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # an explicit driver path: Selenium Manager must never download a browser or driver
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
def loaded(browser, real_report):
    path, data = real_report
    browser.get_log("browser")  # drain what earlier tests logged
    browser.get_log("performance")
    browser.get(path.as_uri())
    return browser, data


def read_table(driver) -> list[list[str]]:
    """Tag, status, bytes text and visibility of every body row, in DOM order."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#tags tbody tr')).map(function (r) {"
        "  return [r.cells[0].textContent, r.cells[1].textContent, r.cells[3].textContent,"
        "          r.offsetParent !== null]; });"
    )


def test_browser_page_loads_with_summary(loaded):
    driver, data = loaded
    from selenium.webdriver.common.by import By

    assert driver.title == "pooltagscan report: win10-1809-x64.raw"
    assert (
        driver.find_element(By.ID, "sha256").text == hashlib.sha256(DUMP.read_bytes()).hexdigest()
    )
    assert data["sha256"] == hashlib.sha256(DUMP.read_bytes()).hexdigest()
    cards = {
        el.get_attribute("data-count"): el.find_element(By.TAG_NAME, "b").text
        for el in driver.find_elements(By.CSS_SELECTOR, ".card")
    }
    statuses = [t["status"] for t in data["tags"]]
    assert cards["tags"] == str(len(data["tags"]))
    assert cards["attributed to a driver"] == str(statuses.count("attributed"))
    assert cards["unknown"] == str(statuses.count("unknown"))
    assert cards["in the tag database"] == str(statuses.count("known"))
    assert cards["unconfirmed (low confidence only)"] == str(statuses.count("unconfirmed"))
    assert cards["drivers analysed"] == str(len(data["drivers"]))
    assert [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#problems li")] == data[
        "problems"
    ]
    assert (
        driver.find_element(By.ID, "shown").text
        == f"{len(data['tags'])} of {len(data['tags'])} tags shown"
    )
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.bars")) == 2
    assert driver.get_log("browser") == []  # no script error, no CSP violation
    sent = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    requests = [m["params"] for m in sent if m["method"] == "Network.requestWillBeSent"]
    # the report asks for itself and nothing else; nobody touched the network at all
    assert [r["request"]["url"] for r in requests if r["documentURL"] == driver.current_url] == [
        driver.current_url
    ]
    assert [
        r["request"]["url"] for r in requests if re.match(r"(http|ws)s?:", r["request"]["url"])
    ] == []


def test_browser_one_row_per_tag(loaded):
    driver, data = loaded
    rows = read_table(driver)
    assert [r[0] for r in rows] == [t["tag"] for t in data["tags"]]
    assert [r[1] for r in rows] == [t["status"] for t in data["tags"]]
    assert [int(r[2].replace(",", "")) for r in rows] == [t["bytes"] for t in data["tags"]]
    assert all(r[3] for r in rows)


def test_browser_sorts_by_bytes(loaded):
    driver, data = loaded
    from selenium.webdriver.common.by import By

    header = driver.find_element(By.XPATH, "//table[@id='tags']//th[button='Bytes']")
    report_order = [(t["tag"], t["bytes"]) for t in data["tags"]]
    header.find_element(By.TAG_NAME, "button").click()
    assert header.get_attribute("aria-sort") == "descending"
    got = [(r[0], int(r[2].replace(",", ""))) for r in read_table(driver)]
    assert got == sorted(report_order, key=lambda t: t[1], reverse=True)
    header.find_element(By.TAG_NAME, "button").click()
    assert header.get_attribute("aria-sort") == "ascending"
    got = [(r[0], int(r[2].replace(",", ""))) for r in read_table(driver)]
    assert got == sorted(report_order, key=lambda t: t[1])
    # sorting by another column resets the indicator of the previous one
    driver.find_element(By.XPATH, "//table[@id='tags']//th/button[.='Tag']").click()
    assert header.get_attribute("aria-sort") == "none"
    assert driver.find_element(By.XPATH, "//th[button='Tag']").get_attribute("aria-sort") == (
        "ascending"
    )
    by_tag = sorted(data["tags"], key=lambda t: t["tag"].lower())
    assert [r[0] for r in read_table(driver)] == [t["tag"] for t in by_tag]


def test_browser_filter_box(loaded):
    driver, data = loaded
    from selenium.webdriver.common.by import By

    def matching(query: str) -> list[str]:
        q = query.lower()
        out = []
        for t in data["tags"]:
            words = [t["tag"], t["status"], t["owner"], t["description"]]
            for c in t["candidates"]:
                words += [c["driver"], c["path"], c["api"], c["evidence"]]
            if q in "\n".join(words).lower():
                out.append(t["tag"])
        return out

    box = driver.find_element(By.ID, "filter")
    tag = next(t["tag"] for t in data["tags"] if t["status"] == "unknown")
    drivers = sorted({c["driver"] for t in data["tags"] for c in t["candidates"]})
    for query in (tag, tag.lower(), "nt!io", "known", *drivers[:1]):
        box.clear()
        box.send_keys(query)
        visible = [r[0] for r in read_table(driver) if r[3]]
        assert visible == matching(query), query
        assert driver.find_element(By.ID, "shown").text == (
            f"{len(visible)} of {len(data['tags'])} tags shown"
        )
    assert matching(tag) == [tag]
    box.clear()
    box.send_keys("no such tag anywhere")
    assert [r for r in read_table(driver) if r[3]] == []
    box.clear()
    box.send_keys(" ")  # an empty query shows everything again
    assert all(r[3] for r in read_table(driver))


def test_browser_tag_link_targets_its_section(loaded):
    driver, data = loaded
    from selenium.webdriver.common.by import By

    row = next(t for t in data["tags"] if t["status"] in ("unknown", "attributed"))
    anchor = report_html.tag_anchor(row["tag"])
    link = driver.find_element(By.CSS_SELECTOR, f"#tags tbody a[href='#{anchor}']")
    assert link.text == row["tag"]
    link.click()
    assert driver.execute_script("return location.hash") == f"#{anchor}"
    assert (
        driver.execute_script("return document.querySelector(':target').dataset.tag") == row["tag"]
    )
    top = driver.execute_script(
        "return document.getElementById(arguments[0]).getBoundingClientRect().top", anchor
    )
    assert 0 <= top <= 20  # scrolled to the top, less html's scroll-padding
    section = driver.find_element(By.ID, anchor)
    addresses = [
        td.text for td in section.find_elements(By.CSS_SELECTOR, ".samples tbody tr td:first-child")
    ]
    # A big-pool allocation's address is virtual; the cell names its table entry too.
    assert addresses == [
        f"0x{s['offset']:x}" + (f" (big pool, entry 0x{s['entry']:x})" if "entry" in s else "")
        for s in row["samples"]
    ]
    previews = section.find_elements(By.CSS_SELECTOR, "pre.hex")
    assert len(previews) == sum(bool(s["preview"]) for s in row["samples"])
    first = next(s for s in row["samples"] if s["preview"])
    assert (
        previews[0]
        .text.splitlines()[0]
        .startswith(
            f"{first['offset']:012x}  "
            + " ".join(first["preview"][i : i + 2] for i in range(0, 16, 2))
        )
    )
    known = [t["tag"] for t in data["tags"] if t["status"] == "known"]
    sections = driver.execute_script(
        "return Array.from(document.querySelectorAll('section.tagpage')).map(s => s.dataset.tag)"
    )
    assert sections == [t["tag"] for t in data["tags"] if t["tag"] not in known]


def test_browser_screenshot(loaded, tmp_path):
    driver, _ = loaded
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == tuple(
        driver.execute_script("return [window.innerWidth, window.innerHeight]")
    )
    assert len(png) > 20_000  # a rendered page, not a blank one


def test_browser_hostile_report_runs_no_injected_script(browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "evil.html"
    with path.open("w", encoding="utf-8") as f:
        report_html.write_html(hand_report(), f)
    browser.get(path.as_uri())
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    cells = browser.find_elements(By.CSS_SELECTOR, "#tags tbody tr td:first-child")
    assert [c.text for c in cells] == [EVIL_TAG, "NfLt", "Zz\\x01q", "Proc", "Irp "]
    browser.find_element(By.XPATH, "//table[@id='tags']//th/button[.='Growth bytes']").click()
    assert [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#tags tbody tr td:first-child")] == [
        "Proc", EVIL_TAG, "Irp ", "Zz\\x01q", "NfLt"
    ]  # fmt: skip
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
