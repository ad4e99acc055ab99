"""The hierarchical log's own C test program (tests/c/test_hier_log.c, built
from csrc/emu/hier_log.c alone): model agreement, the late-writer steps, a
writer/collector race with page contents checked, and four 6 TiB logs with
1000 dirty pages in bounded memory; again under ASan/UBSan and TSan."""
import os
import re
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = [os.path.join(HERE, "c", "test_hier_log.c"),
           os.path.join(ROOT, "csrc", "emu", "hier_log.c")]

BUILDS = {
    "plain": (["-O2"], 4000000),
    "asan": (["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
              "-fno-omit-frame-pointer"], 1000000),
    "tsan": (["-O1", "-g", "-fsanitize=thread"], 300000),
}


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_hier_log_c_program(tmp_path, build):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on PATH")
    flags, race_writes = BUILDS[build]
    exe = str(tmp_path / ("test_hier_log_" + build))
    r = subprocess.run([cc, "-std=gnu11", "-pthread", "-Wall", "-Wextra", "-Werror"] + flags
                       + ["-I" + os.path.join(ROOT, "csrc", "include"),
                          "-I" + os.path.join(ROOT, "csrc")] + SOURCES + ["-o", exe],
                       capture_output=True, text=True)
    if r.returncode and build != "plain" and "sanitize" in r.stderr:
        pytest.skip("%s runtime not installed: %s" % (build, r.stderr.strip()[-200:]))
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    r = subprocess.run([exe, str(race_writes)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "WARNING: ThreadSanitizer" not in r.stderr, r.stderr[-3000:]
    m = re.search(r"^(\d+) passed, 0 failed$", r.stdout, flags=re.M)
    assert m and int(m.group(1)) >= 59, r.stdout
