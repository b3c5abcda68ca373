"""Open a replay's report.html in headless chromium and check it against its own summary.json:
a plot for every aggregated signal, each alert's interval on the plots of its signals (and no
mark elsewhere), a timeline interval per alert, no console error, no request beyond the file.
Used by .ci/run on the real logs of ../shared/data (which the test suite must not need).

    python tests/support/check_report.py OUT_DIR [OUT_DIR ...]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.browser import open_report

CHROMIUM = "/usr/bin/chromium"


def check(browser, out: Path) -> list[str]:
    summary = json.loads((out / "summary.json").read_text())
    page_text = (out / "report.html").read_text()
    data = json.loads(page_text.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0])
    opened = open_report(browser, out / "report.html")
    page = opened.page
    problems = [f"console: {e}" for e in opened.errors]
    if opened.requests != [(out / "report.html").resolve().as_uri()]:
        problems.append(f"requests beyond the file: {opened.requests}")
    plots = page.eval_on_selector_all(".plot", "ps => ps.map(p => p.dataset.signal)")
    if sorted(plots) != sorted(data["series"]):
        problems.append(f"{len(plots)} plots for {len(data['series'])} aggregated signals")
    marks = Counter(tuple(m) for m in page.eval_on_selector_all(
        ".alert-mark", "ms => ms.map(m => [m.closest('.plot').dataset.signal, m.dataset.rule])"))
    want = Counter((signal, a["rule"]) for a in data["alerts"] for signal in a["on"])
    if marks != want:
        problems.append(f"alert marks differ: missing {sorted((want - marks).elements())[:5]}, extra {sorted((marks - want).elements())[:5]}")
    for a in data["alerts"]:  # independently of "on": an alert on a plotted signal is marked there
        if a["signal"] in data["series"] and not marks[(a["signal"], a["rule"])]:
            problems.append(f"no {a['rule']} mark on {a['signal']}")
    intervals = page.locator(".alert-interval").count()
    if intervals != summary["alerts_raised"] or len(data["alerts"]) != summary["alerts_raised"]:
        problems.append(f"{intervals} timeline intervals for {summary['alerts_raised']} alerts raised")
    page.close()
    print(("FAIL" if problems else "OK") + f" report {out}: {len(plots)} plots, {sum(marks.values())} alert marks "
          f"for {len(data['alerts'])} alerts, {intervals} timeline intervals")
    return problems


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    failed = False
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for out in argv:
                for problem in check(browser, Path(out)):
                    print(f"  {problem}")
                    failed = True
        finally:
            browser.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
