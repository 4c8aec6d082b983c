"""The command line as a terminal runs it, in real subprocesses: quiet output, and Ctrl-C (SIGINT
to the whole foreground process group, as a terminal sends it) stops a flow command within
seconds, with one line, and leaves what is finished to resume. The waits below are generous
failure detectors (a hang fails the test), not measurements."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    """One Prefect home for this module's commands: its database is created once."""
    return tmp_path_factory.mktemp("prefect-home")


def _env(prefect_home: Path) -> dict[str, str]:
    """The user's environment: no Prefect server configured, analytics switch not set (the CLI
    itself must turn it off), an isolated Prefect home."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL")}
    env.update(PREFECT_HOME=str(prefect_home), PYTHONPATH=str(REPO))
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def _group_gone(pgid: int, wait: float = 30.0) -> bool:
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_a_flow_command_is_quiet_unless_verbose(tmp_path, prefect_home):
    args = ["eval", "geneval-scenes", "--generator", "ground-truth", "--limit", "6", "--n-images", "1",
            "--size", "136"]
    res = subprocess.run(_cli(*args, "--out", str(tmp_path / "run")), env=_env(prefect_home),
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for noise in ("telemetry", "Finished in state", "ERROR", "Traceback", "Starting temporary server"):
        assert noise not in res.stderr, f"{noise!r} in:\n{res.stderr}"
    assert "INFO eval.geneval.run: GenEval run" in res.stderr  # our own progress lines stay
    assert json.loads(res.stdout.splitlines()[-1])["overall"] >= 0.98
    loud = subprocess.run(_cli("--verbose", *args, "--out", str(tmp_path / "run2")), env=_env(prefect_home),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert loud.returncode == 0 and "Finished in state Completed()" in loud.stderr
    assert "telemetry" not in loud.stderr


def test_ctrl_c_stops_a_flow_command_within_seconds_and_it_resumes(tmp_path, prefect_home):
    out = tmp_path / "run"
    cmd = _cli("eval", "geneval-scenes", "--generator", "ground-truth", "--size", "256", "--limit", "60",
               "--n-images", "4", "--out", str(out))  # 240 images, about 0.01 s each
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=_env(prefect_home), stdout=subprocess.PIPE, stderr=err, text=True,
                                cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not any(out.glob("*/samples/*.png")):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "generation never started:\n" + log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        proc.wait(timeout=60)  # the bug took about 4 minutes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = log.read_text()
    assert proc.returncode == 130, stderr
    assert "interrupted: finished work is kept; rerun the same command" in stderr
    assert "Traceback" not in stderr and "Connection refused" not in stderr
    assert _group_gone(proc.pid), "the Prefect server outlived the command"
    assert not list(out.rglob("*.tmp")), "a half-written file was left behind"
    kept = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*/samples/*.png")}
    assert 0 < len(kept) < 240
    # the same command again resumes: finished images are kept as they are
    res = subprocess.run(cmd, env=_env(prefect_home), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"{240 - len(kept)} images generated, {len(kept)} kept" in res.stderr
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in kept} == kept
    assert len(list(out.glob("*/samples/*.png"))) == 240
    assert json.loads(res.stdout.splitlines()[-1])["overall"] >= 0.98


def test_library_info_lines_on_the_root_logger_show_only_when_verbose(prefect_home):
    """open_clip logs its loading steps with `logging.info` on the root logger."""
    code = ("import sys; from flows import runtime; runtime.configure_logging(sys.argv[1] == 'v'); "
            "from nexus_gen.scoring.clip import load_clip; load_clip('tiny')")
    quiet, loud = (subprocess.run([sys.executable, "-c", code, flag], env=_env(prefect_home),
                                  capture_output=True, text=True, timeout=300) for flag in ("q", "v"))
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert "INFO root:" in loud.stderr and "INFO root:" not in quiet.stderr
    assert "INFO nexus_gen.scoring.clip: loaded CLIP" in quiet.stderr  # ours stay
