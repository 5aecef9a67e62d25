"""The suite's loop guard catches what the event loop swallows (so no test can pass over it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def test_guard_fails_a_test_whose_task_died_unnoticed(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(
        """
        import asyncio

        async def test_leaks_a_failed_task():
            async def boom():
                raise RuntimeError("nobody awaits me")
            task = asyncio.get_running_loop().create_task(boom())
            await asyncio.sleep(0.01)
            del task

        async def test_callback_raises():
            asyncio.get_running_loop().call_soon(lambda: 1 / 0)
            await asyncio.sleep(0.01)

        async def test_clean():
            await asyncio.sleep(0)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=session",
        "-o",
        "asyncio_default_test_loop_scope=session",
    )
    # The guard fails them at teardown, so each is counted as an error next to its passed call.
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["*the event loop swallowed*"])


async def test_guard_is_installed_for_coroutine_tests() -> None:
    handler = asyncio.get_running_loop().get_exception_handler()
    assert handler is not None
