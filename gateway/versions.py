"""The start-up check that the libraries whose internals the gateway uses are tested versions.

The gateway subclasses uvicorn's httptools protocol and starts its workers with uvicorn's
private `_subprocess`, switches prometheus-client's value class for multiprocess mode and
adds to a histogram's sum and buckets directly, reads httpx-aiohttp's response stream's
aiohttp response, and watches aiohttp's connection protocol's `closed` future (added in
3.12.4) to fail a body whose connection died. None of that is a public API, so a
new minor release may change it without notice, and the failure would show as a hung stream
or a wrong metric in production rather than an ImportError. `pyproject.toml` bounds these
four packages to the range CI runs the test suite against (`.ci/constraints-min.txt` and
`.ci/constraints-new.txt`); pip can still be told to install something else, so
`gateway serve` checks the installed versions against the same ranges and refuses to start
on another one, with one line per package. `GATEWAY_ALLOW_UNTESTED=1` starts anyway (the
lines become warnings), for trying out a new release.

It does not check the libraries used only through their public APIs (Starlette, httpx,
redis, ...): their declared minimums are tested by CI and pip enforces them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

TESTED: dict[str, str] = {
    "uvicorn": ">=0.50,<0.56",
    "prometheus-client": ">=0.26,<0.27",
    "httpx-aiohttp": ">=0.1.10,<0.3",
    "aiohttp": ">=3.12.4,<3.15",
}
"""Per package whose internals are used, the range CI tests; `pyproject.toml` declares the
same (a test keeps them equal). The upper bound is the next minor after the newest tested."""

ALLOW_UNTESTED_ENV = "GATEWAY_ALLOW_UNTESTED"


class VersionCheck(NamedTuple):
    messages: list[str]
    """One per package outside its tested range (empty when all are tested): a log line's
    message, to print as an error when refusing, as a warning otherwise."""
    refuse: bool
    """True when the gateway must not start: a package is untested and not allowed."""


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def check_tested_versions(
    environ: Mapping[str, str],
    installed: Callable[[str], str | None] = _installed,
    tested: Mapping[str, str] = TESTED,
) -> VersionCheck:
    """The packages of `tested` whose installed version is outside their tested range."""
    allowed = environ.get(ALLOW_UNTESTED_ENV, "") not in ("", "0")
    problems: list[str] = []
    for package, spec in tested.items():
        found = installed(package)
        try:
            # prereleases: a 0.55.1rc1 is within ">=0.50,<0.56" as far as internals go.
            ok = found is not None and SpecifierSet(spec).contains(Version(found), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            problems.append(f"{package} {found or '(not installed)'} (tested: {spec})")
    if not problems:
        return VersionCheck([], refuse=False)
    if allowed:
        return VersionCheck(
            [
                f"untested {problem}; starting anyway because {ALLOW_UNTESTED_ENV} is set"
                for problem in problems
            ],
            refuse=False,
        )
    return VersionCheck(
        [
            f"refusing to start on untested {problem}: the gateway uses its internals; "
            f"install a version in that range, or set {ALLOW_UNTESTED_ENV}=1 to start anyway"
            for problem in problems
        ],
        refuse=True,
    )
