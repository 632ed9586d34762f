"""Open an HTML report in headless Chromium and check what a person would see.

    python -m torch_imdb.report_check [results/report.html] [--screenshot results/report_screenshot.png]

A copy of the page gets a small script: at the top it records script errors
and ``console.error`` calls; after the page has loaded it waits until the
force plots stop changing, then measures, in the browser's own layout:

- each force plot (``.force``): an SVG with drawn shapes and a non-zero bounding box;
- each text-plot token (shap's ``_tp_…_ind_N`` elements) whose shown value is
  non-zero and which shap meant to colour visibly (alpha >= 0.05 in its inline
  style; tiny values are transparent by design): a computed background colour
  that is not transparent, red for a positive value and blue for a negative one;
- the page height, for a full-page screenshot.

Chromium's ``--dump-dom`` returns the page with the measurements written into
it. Exit code 0 when every check passes, 1 when one fails, 2 for a missing
report; with Chromium not installed it prints SKIPPED and exits 0.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from torch_imdb.cli import Parser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=20000", "--hide-scrollbars"]

EARLY = """<script>window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + e.message));
(orig => { console.error = (...a) => { window.__errors.push('console.error: ' + a.join(' ')); orig(...a); }; })(console.error);
</script>"""

# Runs after load; waits until the count of drawn force-plot shapes is stable for 3 polls.
CHECK = """<script>
function __rgba(s) { const m = s.match(/rgba?\\(([^)]*)\\)/); if (!m) return null;
  const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; }
function __measure() {
  const forces = [...document.querySelectorAll('.force')].map(f => {
    const svg = f.querySelector('svg'); if (!svg) return {svg: false};
    const box = svg.getBBox ? svg.getBBox() : {width: 0, height: 0};
    return {svg: true, width: box.width, height: box.height,
            shapes: svg.querySelectorAll('path, rect, line, polygon').length};
  });
  const tokens = [...document.querySelectorAll('[id^="_tp_"]')].filter(e => /_ind_\\d+$/.test(e.id)).map(e => {
    const shown = e.previousElementSibling ? parseFloat(e.previousElementSibling.textContent) : NaN;
    // the colour shap meant, read from the inline style whatever its number format
    const inline = (e.getAttribute('style') || '').match(/background:\\s*rgba\\(([^;]*)\\)/);
    const plain = inline ? inline[1].replace(/np\\.float[0-9]+\\(/g, '') : '';  // numpy reprs around the numbers
    const meant = (plain.match(/-?[0-9.]+(e-?[0-9]+)?/g) || []).map(Number);
    return {id: e.id, value: shown, intended_alpha: meant.length === 4 ? meant[3] : null,
            color: __rgba(getComputedStyle(e).backgroundColor)};
  });
  return {forces, tokens, height: document.documentElement.scrollHeight, errors: window.__errors};
}
window.addEventListener('load', () => {
  let last = -1, stable = 0;
  const poll = setInterval(() => {
    const n = [...document.querySelectorAll('.force svg')].reduce((k, s) => k + s.querySelectorAll('*').length, 0);
    stable = (n === last) ? stable + 1 : 0; last = n;
    if (stable >= 3) { clearInterval(poll);
      const pre = document.createElement('pre'); pre.id = '__check';
      pre.textContent = JSON.stringify(__measure()); document.body.appendChild(pre); }
  }, 200);
});
</script>"""


VISIBLE_ALPHA = 0.05


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _run(chromium: str, args: list[str], url: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=240)


def visible_tokens(tokens: list[dict], floor: float = VISIBLE_ALPHA) -> list[dict]:
    """Tokens with a non-zero shown value that shap meant to colour visibly (alpha >= ``floor`` in its inline style).

    shap's colour map is transparent at 0 and opaque at the plot's colour limit,
    so tiny values are drawn (nearly) transparent by design; every token shap
    meant to colour at all visibly must show that colour in the browser.
    """
    return [t for t in tokens if t["value"] is not None and t["value"] == t["value"] and t["value"] != 0
            and (t.get("intended_alpha") is None or t["intended_alpha"] >= floor)]


def token_problems(tokens: list[dict]) -> list[str]:
    """Visible text-plot tokens whose colour does not show their value's sign (red: positive, blue: negative)."""
    bad = []
    for t in visible_tokens(tokens):
        v, c = t["value"], t["color"]
        if c is None or c["a"] <= 0:
            bad.append(f"{t['id']} (value {v}) has no background colour")
        elif (v > 0) != (c["r"] > c["b"]):
            bad.append(f"{t['id']} (value {v}) is coloured rgb({c['r']}, {c['g']}, {c['b']}), the wrong hue")
    return bad


def check_report(path: str | Path, screenshot: str | Path | None = None, chromium: str | None = None) -> dict:
    """Render ``path`` as a person would and return what was measured (see the module docstring).

    Keys: force_plots, rendered (force plots with drawn, non-empty SVG), text_tokens,
    coloured_tokens, token_problems, script_errors, height, screenshot.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    page = Path(path).read_text(encoding="utf-8")
    head = page.find("<head>")
    page = (page[: head + 6] + EARLY + page[head + 6 :]) if head >= 0 else EARLY + page
    page = page.replace("</body>", CHECK + "</body>") if "</body>" in page else page + CHECK
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "page.html"
        probe.write_text(page, encoding="utf-8")
        run = _run(chromium, ["--dump-dom"], probe.as_uri())
    found = re.search(r'<pre id="__check">(.*?)</pre>', run.stdout, re.S)
    if not found:
        raise RuntimeError("the page never finished rendering in Chromium (no measurement came back)")
    import html

    m = json.loads(html.unescape(found.group(1)))
    errors = list(m["errors"]) + [line for line in run.stderr.splitlines()
                                  if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]
    rendered = sum(f["svg"] and f["shapes"] > 0 and f["width"] > 0 and f["height"] > 0 for f in m["forces"])
    nonzero = visible_tokens(m["tokens"])
    problems = token_problems(m["tokens"])
    shot = None
    if screenshot:
        shot = Path(screenshot).resolve()
        height = max(600, min(int(m["height"]), 30000))
        _run(chromium, [f"--screenshot={shot}", f"--window-size=1200,{height}"], Path(path).resolve().as_uri())
    return {"force_plots": len(m["forces"]), "rendered": rendered, "text_tokens": len(m["tokens"]),
            "coloured_tokens": len(nonzero) - len(problems), "nonzero_tokens": len(nonzero),
            "token_problems": problems, "script_errors": errors, "height": m["height"],
            "screenshot": str(shot) if shot else None}


def passed(res: dict) -> bool:
    return (res["force_plots"] > 0 and res["rendered"] == res["force_plots"] and res["nonzero_tokens"] > 0
            and not res["token_problems"] and not res["script_errors"])


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m torch_imdb.report_check", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", nargs="?", default="results/report.html")
    p.add_argument("--screenshot", default=None, help="also save a full-page PNG screenshot here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if find_chromium() is None:
        print("SKIPPED: chromium is not installed (apt-get install chromium); the report was not checked")
        return 0
    if not Path(args.report).exists():
        print(f"error: {args.report} does not exist; build it with `python -m torch_imdb.report`", file=sys.stderr)
        return 2
    res = check_report(args.report, args.screenshot)
    ok = passed(res)
    print(f"{'PASS' if ok else 'FAIL'}: {res['rendered']} of {res['force_plots']} force plots drawn; "
          f"{res['coloured_tokens']} of {res['nonzero_tokens']} visible text-plot tokens coloured with the right hue; "
          f"{len(res['script_errors'])} script errors" + (f"; screenshot {res['screenshot']}" if res["screenshot"] else ""))
    for line in res["token_problems"][:10] + res["script_errors"][:10]:
        print("  " + line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
