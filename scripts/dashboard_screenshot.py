"""A screenshot of the dashboard, as in the README: headless Chromium, a fresh profile.

    python scripts/dashboard_screenshot.py http://127.0.0.1:8000/dashboard docs/dashboard.png

Waits for the page's first complete render, then for ``--settle`` seconds (the
range chart loads after it), and writes a PNG of the page's top ``--height``
pixels, palette-reduced when Pillow is installed so it stays small.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import browser  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("output", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1150)
    parser.add_argument("--settle", type=float, default=4.0)
    args = parser.parse_args()
    reason = browser.missing()
    if reason:
        sys.exit(reason)
    with tempfile.TemporaryDirectory() as profile:
        driver = browser.chromium(Path(profile))
        try:
            driver.set_window_size(args.width, args.height)
            driver.get(args.url)
            browser.wait_until(driver, "return window.psDashboard && window.psDashboard.ready", 30)
            time.sleep(args.settle)
            driver.save_screenshot(str(args.output))
        finally:
            driver.quit()
    try:
        from PIL import Image
    except ImportError:
        print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")
        return
    image = Image.open(args.output).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
