"""The generated C of every example, built with AddressSanitizer and UndefinedBehaviorSanitizer at odd
sizes, runs clean and matches eager (tests/sanitized_run.py, in a process with the runtimes preloaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "sanitized_run.py"


def runtime(name: str) -> str | None:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    path = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_every_example_runs_clean_under_asan_and_ubsan():
    asan, ubsan = runtime("libasan.so"), runtime("libubsan.so")
    if not (asan and ubsan):
        pytest.skip("the C compiler has no sanitizer runtimes")
    env = {**os.environ, "LD_PRELOAD": f"{asan} {ubsan}", "ASAN_OPTIONS": "detect_leaks=0:detect_odr_violation=0",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=1200)
    report = done.stdout + done.stderr[-6000:]
    assert done.returncode == 0, report
    assert done.stdout.count(": ran sanitized") == 12 and "MISMATCH" not in done.stdout, report
