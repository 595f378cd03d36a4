"""Real runs of the shipped recipes (made once per test session, with their own cache) and a headless
Chromium that loads a page and reports its DOM, console messages and the network requests it made."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import RECIPES, ROOT, cli

_spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "scripts" / "report_screenshot.py")
report_screenshot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report_screenshot)

_RUNS: dict[str, Path] = {}


def demo_runs(tmp_path_factory) -> dict[str, Path]:
    """quickstart (seed 0, seed 1, budget 5%) and perplexity_filter (--limit 300), each a finished run folder."""
    if _RUNS:
        return _RUNS
    work = tmp_path_factory.mktemp("runs")
    recipes = work / "recipes"
    shutil.copytree(RECIPES, recipes, ignore=shutil.ignore_patterns("out"))
    quickstart = (recipes / "quickstart.yaml").read_text()
    (recipes / "quickstart_seed1.yaml").write_text(quickstart.replace("seed: 0", "seed: 1"))
    (recipes / "quickstart_5pct.yaml").write_text(quickstart.replace("budget: 10%", "budget: 5%"))
    env = {"SELECTKIT_CACHE_DIR": str(work / "cache"), "HF_HOME": str(work / "hf")}
    for name, recipe, extra in (("quickstart", "quickstart.yaml", []),
                                ("quickstart_seed1", "quickstart_seed1.yaml", []),
                                ("quickstart_5pct", "quickstart_5pct.yaml", []),
                                ("perplexity", "perplexity_filter.yaml", ["--limit", "300"])):
        out = work / "out" / name
        result = cli("run", recipes / recipe, "--out", out, "--quiet", *extra, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        _RUNS[name] = out
    return _RUNS


def copy_run(run: Path, target: Path, edit=None) -> Path:
    """A copy of a run folder; `edit(manifest)` may change the manifest in place."""
    shutil.copytree(run, target)
    if edit is not None:
        manifest = json.loads((target / "manifest.json").read_text())
        edit(manifest)
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


# the browser ---------------------------------------------------------------------------------
def find_chromium() -> str | None:
    """/usr/bin/chromium, installed from Debian's package when missing and we may; None when impossible."""
    binary = report_screenshot.CHROMIUM
    if Path(binary).exists():
        return binary
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            if subprocess.run(command, capture_output=True, env=env, timeout=1200).returncode != 0:
                return None
    return binary if Path(binary).exists() else None


@dataclass
class Loaded:
    dom: str
    console: list[str]  # every console message the page produced (ours has no script: should be none)
    page_requests: list[str]  # URLs the page itself asked the network for (not the browser's own services)


def load_page(binary: str, page: Path, work: Path) -> Loaded:
    """Open a local page headless; return the DOM after parsing, the console lines and the page's requests."""
    work.mkdir(parents=True, exist_ok=True)
    net_log = work / "net.json"
    command = report_screenshot.chromium_command(work / "profile", "--enable-logging=stderr", "--v=0",
                                                 f"--log-net-log={net_log}", "--dump-dom", page.resolve().as_uri(),
                                                 binary=binary)
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return Loaded(result.stdout, console, page_requests(net_log))


def page_requests(net_log: Path) -> list[str]:
    """URLs of requests started on behalf of a page: in Chromium's net log the browser's own requests
    (updates, time sync) carry the initiator 'not an origin'; a page's carry its origin ('null' for file://)."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    begin = log["constants"]["logEventPhase"]["PHASE_BEGIN"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start and event.get("phase") == begin and params.get("initiator") != "not an origin":
            urls.append(params.get("url", ""))
    return sorted(u for u in urls if not u.startswith(("file:", "data:")))
