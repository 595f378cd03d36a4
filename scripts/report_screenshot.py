"""Regenerate docs/report.png: run the quickstart recipe on the demo data (temp folders, temp cache),
build its report.html and screenshot it in headless Chromium. The tests load `chromium_command` from here.

    .venv/bin/python scripts/report_screenshot.py [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# no network, no background services, no first-run UI: the page is all the browser loads
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_command(profile: Path, *extra: str, binary: str = CHROMIUM) -> list[str]:
    """A headless Chromium command line with a throwaway profile folder."""
    return [binary, *FLAGS, f"--user-data-dir={profile}", *extra]


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2000) -> Path:
    """Screenshot the top `width` x `height` pixels of a local page."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = chromium_command(Path(profile), f"--screenshot={png}", f"--window-size={width},{height}",
                                   "--hide-scrollbars", page.resolve().as_uri())
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    return png


def quickstart_report(work: Path) -> Path:
    """Run the quickstart on a copy of recipes/ and build its report; returns report.html."""
    recipes = work / "recipes"
    shutil.copytree(ROOT / "recipes", recipes, ignore=shutil.ignore_patterns("out"))
    env = {**os.environ, "SELECTKIT_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    out = work / "out"
    for args in (["run", recipes / "quickstart.yaml", "--out", out, "--quiet"], ["report", out]):
        subprocess.run([sys.executable, "-m", "selectkit", *map(str, args)], check=True, env=env, cwd=work,
                       capture_output=True, text=True, timeout=600)
    return out / "report.html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as work:
        png = screenshot(quickstart_report(Path(work)), args.out)
    print(f"wrote {png} ({png.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
