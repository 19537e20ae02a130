"""Screenshot a Snakemake report in headless Chromium, opened at one category and result.

The report is a single-page app, so a copy of it gets a short script that clicks what a reader
would click (the category in the menu, then a result whose text contains --item); the report
itself is not changed. Needs the Debian package `chromium`.

    python bench/report_screenshot.py report.html --category Win-rates --item gold --out shot.png
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

CLICK = """
<script>
function clickText(sel, text) {
  const el = [...document.querySelectorAll(sel)].find(e => e.textContent.trim().includes(text));
  if (el) { el.click(); return true; } return false;
}
setTimeout(() => clickText('a', %(category)s), 1500);
function openItem(text) {  // the row's first link: the "view" (eye) icon
  const row = [...document.querySelectorAll('tr')].find(e => e.textContent.includes(text));
  if (row) { (row.querySelector('a') || row).click(); }
}
setTimeout(() => openItem(%(item)s), 3000);
</script>
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report")
    ap.add_argument("--category", required=True)
    ap.add_argument("--item", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="1400,1000")
    a = ap.parse_args()
    html = Path(a.report).read_text()
    script = CLICK % {"category": json.dumps(a.category), "item": json.dumps(a.item)}
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        end = html.rfind("</body>")  # the last one: the bundled scripts contain the string too
        page.write_text(html[:end] + script + html[end:] if end >= 0 else html + script)
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", f"--window-size={a.size}", "--virtual-time-budget=15000",
                        f"--screenshot={Path(a.out).resolve()}", page.as_uri()], check=True, timeout=180,
                       capture_output=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
