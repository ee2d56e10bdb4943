"""monitor.process.run_command against real programs: output bounds, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from monitor.process import CommandFailed, CommandMissing, run_command


def test_output_and_status():
    assert asyncio.run(run_command(["printf", "a\\nb"], 5)) == b"a\nb"
    with pytest.raises(CommandFailed, match="status 3: the real error") as failed:
        asyncio.run(run_command([sys.executable, "-c", "import sys; print('x', file=sys.stderr);"
                                 "print('the real error', file=sys.stderr); sys.exit(3)"], 5))
    assert failed.value.status == 3
    with pytest.raises(CommandMissing):
        asyncio.run(run_command(["/nonexistent/tool"], 5))


def test_a_flooding_program_is_stopped_at_the_limit_and_killed(tmp_path):
    pidfile = tmp_path / "pid"
    flood = [sys.executable, "-c", f"import os, sys; open({str(pidfile)!r}, 'w').write("
             "str(os.getpid()))\nwhile True: sys.stdout.buffer.write(b'x' * 65536)"]
    with pytest.raises(RuntimeError, match="wrote more than 1 MiB"):
        asyncio.run(run_command(flood, 30, limit=1024 * 1024))
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


def test_a_chatty_stderr_does_not_block_and_is_bounded():
    chatty = [sys.executable, "-c", "import sys\nfor _ in range(200): "
              "sys.stderr.write('e' * 65536)\nprint('done')"]
    assert asyncio.run(run_command(chatty, 30)) == b"done\n"


def test_timeout_and_cancellation_kill_the_program(tmp_path):
    pidfile = tmp_path / "pid"
    sleeper = [sys.executable, "-c", f"import os, time; open({str(pidfile)!r}, 'w').write("
               "str(os.getpid())); time.sleep(60)"]
    with pytest.raises(RuntimeError, match="did not finish within 1 s"):
        asyncio.run(run_command(sleeper, 1))
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)
    pidfile.unlink()

    async def cancelled() -> None:
        task = asyncio.create_task(run_command(sleeper, 60))
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)
