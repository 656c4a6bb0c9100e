"""The suite's own rules (tests/conftest.py) that no single package's tests own."""

from __future__ import annotations

import textwrap

import pytest

INNER_CONFTEST = 'pytest_plugins = ["tests.conftest"]\n'


def test_a_leftover_process_fails_its_own_test_and_no_other(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        textwrap.dedent(
            """
            import gc
            import subprocess

            kept = []

            def test_leaves_a_process():
                kept.append(subprocess.Popen(["sleep", "600"]))

            def test_next_one():
                kept.clear()
                gc.collect()  # where the Popen of a running process would warn
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*left child processes behind (now killed)*",
            "*: sleep 600*",
            "ERROR *test_leaves_a_process*",
        ]
    )
