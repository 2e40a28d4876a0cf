"""Console first load: from navigation start until the map is interactive, in headless Chromium.

Run:  .venv/bin/python bench/console_ready.py [--url http://127.0.0.1:8000] [--key KEY] [--runs 5]

Against a running `cimtwin up` (the key defaults to var/admin-api-key). It prints one JSON object.

Measured: the console's ``cimtwin-ready`` performance mark (``performance.getEntriesByName(
"cimtwin-ready")[0].startTime``, ms since navigation start), which the console sets once the map
has its style and first tiles and the UI is wired (SSE connected, first alerts and states fetched).
Each cold run uses a fresh browser context (empty HTTP cache and storage; the key is put in
localStorage as a returning operator has it); the warm run then loads the console again in the
same context. Debian's ``/usr/bin/chromium`` through Playwright, one browser for all runs, started
before the first run. Target (issue 6): ``console_ready_ms`` (p50 of the cold runs) < 3000.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# WebGL without a GPU: ANGLE on SwiftShader.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
VIEWPORT = {"width": 1280, "height": 800}
READY_MARK = "cimtwin-ready"


def _ready_ms(page, url: str, timeout_ms: float) -> float:
    page.goto(url, wait_until="commit")
    page.wait_for_function(f"performance.getEntriesByName({READY_MARK!r}).length > 0", timeout=timeout_ms)
    return page.evaluate(f"performance.getEntriesByName({READY_MARK!r})[0].startTime")


def measure_console_ready(base_url: str, api_key: str, *, runs: int = 5, timeout_ms: float = 30_000) -> dict:
    """p50/max ms from navigation start to the console's ``cimtwin-ready`` mark, cold and warm."""
    from playwright.sync_api import sync_playwright

    url = base_url.rstrip("/") + "/"
    cold, warm = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                context = browser.new_context(viewport=VIEWPORT)
                context.add_init_script(f"localStorage.setItem('cimtwin.apiKey', {json.dumps(api_key)})")
                page = context.new_page()
                cold.append(_ready_ms(page, url, timeout_ms))
                warm.append(_ready_ms(page, url, timeout_ms))
                context.close()
        finally:
            browser.close()
    return {"console_ready_ms": round(statistics.median(cold), 1), "console_ready_max_ms": round(max(cold), 1),
            "console_ready_warm_ms": round(statistics.median(warm), 1), "runs": runs,
            "cold_ms": [round(v, 1) for v in cold], "warm_ms": [round(v, 1) for v in warm]}


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", help="an API key (default: var/admin-api-key)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    key = args.key or (root / "var" / "admin-api-key").read_text().strip()
    print(json.dumps(measure_console_ready(args.url, key, runs=args.runs)))


if __name__ == "__main__":
    main()
