"""The hostile-input suite's fuzz counts, printed in pytest's summary (with -q too)."""

from __future__ import annotations

from collections import Counter

import pytest

FUZZ_COUNTS = pytest.StashKey[Counter[str]]()
FUZZ_NOTES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def fuzz_counts(pytestconfig: pytest.Config) -> Counter[str]:
    """What each fuzz tried: `fuzz_counts["parse_request: any bytes"] += 1` per input."""
    return pytestconfig.stash.setdefault(FUZZ_COUNTS, Counter())


@pytest.fixture(scope="session")
def fuzz_notes(pytestconfig: pytest.Config) -> list[str]:
    """Lines for the summary that are not counts (memory measured over a fuzz, ...)."""
    return pytestconfig.stash.setdefault(FUZZ_NOTES, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    counts = config.stash.get(FUZZ_COUNTS, Counter())
    notes = config.stash.get(FUZZ_NOTES, [])
    if not counts and not notes:
        return
    terminalreporter.section("hostile input: inputs tried")
    for name, count in counts.items():
        terminalreporter.write_line(f"{name}: {count}")
    if counts:
        terminalreporter.write_line(f"total inputs: {sum(counts.values())}")
    for note in notes:
        terminalreporter.write_line(note)
