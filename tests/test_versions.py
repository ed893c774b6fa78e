"""The dependency ranges: `gateway serve` refuses an untested version of a library whose
internals it uses, and the declared ranges, the guard's table and CI's constraints files say
the same thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from gateway.versions import ALLOW_UNTESTED_ENV, TESTED, check_tested_versions
from tests.support.gateway_proc import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent


def declared() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {canonicalize_name(r.name): r.specifier for r in requirements}


def pins(name: str) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (ROOT / ".ci" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, _, pinned = line.partition("==")
            found[canonicalize_name(package)] = Version(pinned)
    return found


def test_the_guard_checks_the_ranges_pyproject_declares() -> None:
    ranges = declared()
    for package, spec in TESTED.items():
        assert ranges[canonicalize_name(package)] == SpecifierSet(spec), package
        # An upper bound: a new minor release of their internals is not taken on trust.
        assert any(s.operator == "<" for s in SpecifierSet(spec)), package


def test_the_minimum_constraints_pin_every_declared_minimum() -> None:
    minimums = pins("constraints-min.txt")
    for package, spec in declared().items():
        lower = [Version(s.version) for s in spec if s.operator == ">="]
        assert lower, f"{package} declares no minimum"
        assert minimums.get(package) == lower[0], package


def test_the_newest_constraints_are_within_the_declared_ranges() -> None:
    newest = pins("constraints-new.txt")
    for package, spec in declared().items():
        assert package in newest, package
        assert spec.contains(newest[package], prereleases=True), (package, newest[package])


def fake_installed(**versions: str | None) -> dict[str, str | None]:
    tested = {"uvicorn": "0.55.0", "prometheus-client": "0.26.0", "httpx-aiohttp": "0.2.0"}
    return {**tested, **{name.replace("_", "-"): v for name, v in versions.items()}}


def test_tested_versions_start_silently() -> None:
    installed = fake_installed()
    assert check_tested_versions({}, installed.get) == ([], False)


def test_an_untested_version_refuses_with_one_line_per_package() -> None:
    installed = fake_installed(uvicorn="0.56.0", prometheus_client="0.19.0")
    check = check_tested_versions({}, installed.get)
    assert check.refuse
    assert len(check.messages) == 2
    assert f"uvicorn 0.56.0 (tested: {TESTED['uvicorn']})" in check.messages[0]
    assert f"prometheus-client 0.19.0 (tested: {TESTED['prometheus-client']})" in check.messages[1]
    assert all(ALLOW_UNTESTED_ENV in message for message in check.messages)


@pytest.mark.parametrize("found", [None, "not-a-version"])
def test_a_missing_or_unreadable_version_is_untested(found: str | None) -> None:
    check = check_tested_versions({}, fake_installed(httpx_aiohttp=found).get)
    assert check.refuse
    assert "httpx-aiohttp" in check.messages[0]


def test_the_escape_hatch_starts_with_a_warning() -> None:
    installed = fake_installed(httpx_aiohttp="0.3.0")
    check = check_tested_versions({ALLOW_UNTESTED_ENV: "1"}, installed.get)
    assert not check.refuse
    assert check.messages == [
        f"untested httpx-aiohttp 0.3.0 (tested: {TESTED['httpx-aiohttp']}); "
        f"starting anyway because {ALLOW_UNTESTED_ENV} is set"
    ]
    # "0" means off, as an unset variable does.
    assert check_tested_versions({ALLOW_UNTESTED_ENV: "0"}, installed.get).refuse


def shadowing_uvicorn(tmp: Path, fake_version: str) -> dict[str, str]:
    """An environment in which `importlib.metadata` finds uvicorn at `fake_version`: a
    dist-info directory ahead of site-packages on the path (the code imported is still the
    installed uvicorn; only its declared version changes)."""
    dist = tmp / "shadow" / f"uvicorn-{fake_version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: uvicorn\nVersion: {fake_version}\n"
    )
    path = os.pathsep.join(p for p in (str(tmp / "shadow"), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


REFUSAL = (
    f"refusing to start on untested uvicorn 0.99.0 (tested: {TESTED['uvicorn']}): the gateway "
    f"uses its internals; install a version in that range, or set {ALLOW_UNTESTED_ENV}=1 to "
    "start anyway"
)


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_serve_refuses_an_untested_uvicorn(tmp_path: Path, log_format: str) -> None:
    env = {**os.environ, **shadowing_uvicorn(tmp_path, "0.99.0"), "GATEWAY_LOG_FORMAT": log_format}
    env.pop(ALLOW_UNTESTED_ENV, None)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    if log_format == "console":
        assert lines == [f"gateway: {REFUSAL}"]
    else:
        line = json.loads(lines[0])
        assert (line["level"], line["event"]) == ("error", REFUSAL)


def test_serve_starts_on_an_untested_uvicorn_when_allowed(tmp_path: Path) -> None:
    env = {**shadowing_uvicorn(tmp_path, "0.99.0"), ALLOW_UNTESTED_ENV: "1"}
    proc = GatewayProcess(None, tmp_path, env=env)
    with proc:
        assert httpx.get(proc.url + "/healthz", timeout=5).status_code == 200
    warnings = [line for line in proc.output().splitlines() if "untested" in line]
    assert len(warnings) == 1, proc.output()
    assert "untested uvicorn 0.99.0" in warnings[0]
    assert "starting anyway" in warnings[0]


def import_server(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import gateway.server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_module_that_patches_uvicorn_refuses_to_import_on_an_untested_one(
    tmp_path: Path,
) -> None:
    """The guard sits with the patches too, for any way in other than `gateway serve`."""
    env = {**os.environ, **shadowing_uvicorn(tmp_path, "0.99.0")}
    env.pop(ALLOW_UNTESTED_ENV, None)
    refused = import_server(env)
    assert refused.returncode == 1
    assert f"gateway.server.UntestedUvicorn: {REFUSAL}" in refused.stderr
    allowed = import_server({**env, ALLOW_UNTESTED_ENV: "1"})
    assert allowed.returncode == 0, allowed.stderr
