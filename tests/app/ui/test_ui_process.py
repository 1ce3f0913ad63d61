"""How a real `scones ui` process ends: Ctrl-C stops it cleanly, and a clean-up that never
returns cannot keep it alive."""
from __future__ import annotations

import signal
import time

import pytest

from helpers import sitecustomize_env
from scones.processes import STOP_DEADLINE_S
from studio_helpers import start_studio


def test_ctrl_c_stops_the_studio_with_exit_0(tmp_path):
    studio = start_studio(tmp_path / "ws")
    try:
        studio.process.send_signal(signal.SIGINT)
        assert studio.process.wait(timeout=30) == 0
        rest = studio.process.stdout.read()
        assert "stopped" in rest and "Traceback" not in rest
    finally:
        if studio.process.poll() is None:
            studio.process.kill()
            studio.process.wait()


@pytest.mark.slow
def test_a_studio_whose_clean_up_hangs_still_exits_and_says_where(tmp_path):
    """waitress's server.close() is made to hang (a sitecustomize in the Studio's own
    interpreter): past the stop deadline the process exits 1 with every thread's stack in
    its output, naming the function that held it up."""
    hook = sitecustomize_env(tmp_path / "hook",
                             "import time\n"
                             "import waitress.server\n"
                             "def close_that_hangs(self):\n"
                             "    time.sleep(3600)\n"
                             "waitress.server.BaseWSGIServer.close = close_that_hangs\n")
    studio = start_studio(tmp_path / "ws", extra_env=hook)
    try:
        stopped_at = time.monotonic()
        studio.process.send_signal(signal.SIGINT)
        assert studio.process.wait(timeout=STOP_DEADLINE_S + 30) == 1
        assert time.monotonic() - stopped_at >= STOP_DEADLINE_S - 1
        assert "close_that_hangs" in studio.process.stdout.read()
    finally:
        if studio.process.poll() is None:
            studio.process.kill()
            studio.process.wait()
