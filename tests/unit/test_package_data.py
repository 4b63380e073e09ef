"""Every file the package serves is installed with it: setup.cfg's package_data
covers the Lua scripts, the SQL, and the dashboard's page and assets."""

from __future__ import annotations

import configparser
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
SERVED = {
    "payload_stats.web": ("templates", "static"),
    "payload_stats.buffer": ("lua",),
    "payload_stats.postgres": ("sql",),
}


def test_package_data_lists_every_served_file():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    data = parser["options.package_data"]
    for package, folders in SERVED.items():
        patterns = [p.strip() for p in data[package].replace(",", "\n").split() if p.strip()]
        base = ROOT / "app" / package.removeprefix("payload_stats").strip(".").replace(".", "/")
        for folder in folders:
            files = [f for f in (base / folder).rglob("*") if f.is_file()]
            assert files, folder
            for file in files:
                relative = PurePosixPath(file.relative_to(base).as_posix())
                assert any(relative.match(p) and len(relative.parts) == len(PurePosixPath(p).parts)
                           for p in patterns), relative  # fmt: skip


def test_the_vendored_chart_library_keeps_its_licence_and_origin():
    folder = ROOT / "app" / "web" / "static" / "dashboard" / "vendor" / "uplot"
    assert "MIT License" in (folder / "LICENSE").read_text()
    source = (folder / "SOURCE.md").read_text()
    assert "npm pack uplot@1.6.32" in source and "sha256" in source
    assert (
        (folder / "uPlot.iife.min.js")
        .read_text()
        .startswith("/*! https://github.com/leeoniya/uPlot")
    )
