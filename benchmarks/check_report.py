"""Open the HTML report in headless Chromium, as a person would, and check what rendered.

    python benchmarks/check_report.py [results/report.html] [--screenshot results/report_screenshot.png]

Checks that every force plot container holds a rendered SVG (shap's JS ran)
and that the browser logged no script error. Exits 0 when the check passes,
1 when it fails, and 0 with a SKIPPED line when Chromium is not installed
(install it with `apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=8000"]


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def check_report(path: str | Path, screenshot: str | Path | None = None, chromium: str | None = None) -> dict:
    """Render ``path``; return counts of force plots, rendered SVGs, text plots, and the script errors seen."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180)
        if screenshot:
            with tempfile.TemporaryDirectory() as profile2:
                subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile2}", f"--screenshot={Path(screenshot).resolve()}",
                                "--window-size=1200,2400", url], capture_output=True, text=True, timeout=180)
    dom = run.stdout
    blocks = dom.split('class="force"')[1:]
    errors = [line for line in run.stderr.splitlines()
              if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]
    return {"force_plots": len(blocks), "rendered": sum("<svg" in b.split('class="review"')[0] for b in blocks),
            "text_plots": dom.count("_zoom"), "script_errors": errors, "dom_chars": len(dom)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", nargs="?", default="results/report.html")
    p.add_argument("--screenshot", default=None, help="also save a PNG screenshot here")
    args = p.parse_args(argv)
    if find_chromium() is None:
        print("SKIPPED: chromium is not installed (apt-get install chromium); the report was not checked")
        return 0
    if not Path(args.report).exists():
        print(f"error: {args.report} does not exist; build it with `python -m torch_imdb.report`", file=sys.stderr)
        return 2
    res = check_report(args.report, args.screenshot)
    ok = res["force_plots"] > 0 and res["rendered"] == res["force_plots"] and not res["script_errors"]
    print(f"{'PASS' if ok else 'FAIL'}: {res['rendered']} of {res['force_plots']} force plots rendered as SVG, "
          f"{len(res['script_errors'])} script errors")
    for line in res["script_errors"]:
        print("  " + line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
