"""``make demo`` (``python -m api.demo``) stops everything it started, however it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.worker.test_cli import _kill_all_of, _processes_of, _processes_with, _wait_gone

# The demo with its HTTP part replaced by a long wait: what is tested is how it starts and stops.
DEMO = """
import sys, time
from pathlib import Path
import api.demo as demo
demo._demo = lambda client, out_dir: (print("serving", flush=True), time.sleep(600))
demo.run(Path(sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_demo_leaves_no_process(tmp_path: Path, stop: signal.Signals) -> None:
    out = tmp_path / "demo-out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRFT_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    demo = subprocess.Popen(
        [sys.executable, "-c", DEMO, str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert demo.stdout is not None
    try:
        lines = []
        for line in demo.stdout:
            lines.append(line.decode(errors="replace"))
            if line.strip() == b"serving":
                break
        assert [line.strip() for line in lines[-1:]] == ["serving"], "".join(lines)
        server_log = out / "server.log"
        workers = set(_processes_with("worker.celery_app"))
        assert workers & set(_processes_of(out)), server_log.read_text()  # serve's worker is up
        assert _processes_with("serve\x00--host\x00127.0.0.1\x00--port"), server_log.read_text()
        demo.send_signal(stop)
        demo.wait(90)
        assert _wait_gone(out, 60) == [], server_log.read_text()
    finally:
        demo.kill()
        demo.wait()
        demo.stdout.close()
        _kill_all_of(out)
