"""`build_once` under real concurrency: two processes asking for the same tiny model get one build,
with the platform's lock (`flock`) and where `fcntl` does not exist (as on Windows)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

# One process: mark that it is about to call build_once, then build "race". The builder logs
# who built, waits until the other process is also about to call build_once (and a moment for it
# to reach the lock), then writes the model; without a working lock both would build.
_WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    mode, log, me, other = sys.argv[1:5]
    if mode == "no-fcntl":
        sys.modules["fcntl"] = None  # `import fcntl` now fails, as on a platform without it
    from nexus_gen.models.cache import build_once

    def builder(out):
        with open(log, "a") as f:
            f.write(me + "\\n")
        while not Path(other).exists():
            time.sleep(0.01)
        time.sleep(0.5)
        (out / "weights.bin").write_bytes(me.encode() * 1000)

    Path(me).touch()
    print(build_once("race", builder))
""")


@pytest.mark.parametrize("mode", ["native", "no-fcntl"])
def test_two_processes_building_the_same_model_give_one_build(tmp_path, mode):
    log = tmp_path / "builds.log"
    ready = [tmp_path / "ready-a", tmp_path / "ready-b"]
    env = dict(os.environ, NEXUS_GEN_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, mode, str(log), str(me), str(other)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (ready, ready[::-1])]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    target = tmp_path / "cache" / "tiny" / "race"
    assert [out.strip() for out, _ in outs] == [str(target)] * 2
    builders = log.read_text().splitlines()
    assert len(builders) == 1, builders  # one build, whichever process got the lock first
    assert (target / "weights.bin").read_bytes() == builders[0].encode() * 1000
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == ["race"]
