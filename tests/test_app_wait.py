"""`curate app` waits for the App's server by its progress, not by a fixed time.

Real child processes stand in for FiftyOne's server (its real start is in tests/test_index.py): one
that starts slowly but keeps working, one that hangs, one that dies, and a wait told to stop by
SIGTERM. Each takes a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curation.core.errors import CurateError
from curation.core.ports import free_port
from curation.index.app import AppServer, wait_until_serving

SLOW_SERVER = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:  # a slow start: busy, nothing logged
    pass


class Version(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(json.dumps({"version": "test"}).encode())

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Version).serve_forever()
"""


def start(tmp_path: Path, code: str, *args: str) -> AppServer:
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=subprocess.STDOUT)
    return AppServer("http://127.0.0.1/datasets/x", process, log)


def test_a_slow_start_that_keeps_working_is_waited_for_past_the_stall_limit(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path, SLOW_SERVER, str(port), "4")
    said: list[str] = []
    try:
        began = time.monotonic()
        wait_until_serving(server, "127.0.0.1", port, said.append, stall_s=1.5)
        assert time.monotonic() - began > 3  # longer than the stall limit: its CPU use kept the wait going
        assert said[0].startswith(f"starting the FiftyOne App on port {port}")
    finally:
        server.stop()


def test_a_hung_start_ends_with_its_last_log_lines_and_a_dead_one_at_once(tmp_path: Path) -> None:
    hung = start(tmp_path, "import time; print('loading the database', flush=True); time.sleep(120)")
    try:
        with pytest.raises(CurateError, match="no progress for 1 s.*loading the database"):
            wait_until_serving(hung, "127.0.0.1", free_port(), lambda line: None, stall_s=1.0)
    finally:
        hung.stop()
    dead = start(tmp_path, "import sys; print('address already in use'); sys.exit(3)")
    with pytest.raises(CurateError, match="exited with code 3 before serving: address already in use"):
        wait_until_serving(dead, "127.0.0.1", free_port(), lambda line: None, stall_s=60)


def test_sigterm_ends_the_wait_and_the_server(tmp_path: Path) -> None:
    server = start(tmp_path, "import time; time.sleep(120)")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    before = signal.getsignal(signal.SIGTERM)
    assert server.wait() is None  # told to stop: no exit code of its own
    assert server.process.poll() is not None and signal.getsignal(signal.SIGTERM) == before
