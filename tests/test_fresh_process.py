"""benchmarks/fresh_process.py: a benchmark's run does not outlive the benchmark that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

BENCHMARK = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {bench!r})
    import fresh_process

    def fine_tune(folder):
        def checkpoint_and_exit(signum, frame):  # what the training loop does on SIGTERM
            Path(folder, "checkpointed").write_text("yes")
            sys.exit(143)
        signal.signal(signal.SIGTERM, checkpoint_and_exit)
        Path(folder, "run.pid").write_text(str(os.getpid()))
        time.sleep(600)

    if __name__ == "__main__":
        sys.exit(fresh_process.run(fine_tune, {folder!r}))
""")


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a reaper (a container's PID 1 may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_killing_the_benchmark_stops_its_run_through_the_runs_sigterm_handler(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(BENCHMARK.format(bench=str(BENCH), folder=str(tmp_path)))
    bench = subprocess.Popen([sys.executable, str(script)])
    pid_file = tmp_path / "run.pid"
    try:
        assert wait_for(pid_file.exists, 60), "the run never started"
        run_pid = int(pid_file.read_text())
        assert alive(run_pid)
        os.kill(bench.pid, signal.SIGKILL)  # no chance to clean up: only the run's own watch can stop it
        bench.wait()
        assert wait_for(lambda: not alive(run_pid), 30), "the run outlived its benchmark"
        assert (tmp_path / "checkpointed").read_text() == "yes"  # stopped by SIGTERM, so training checkpoints
    finally:
        bench.kill()
        if pid_file.exists() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_run_s_exit_code_reaches_the_benchmark(tmp_path):
    sys.path.insert(0, str(BENCH))
    import fresh_process

    assert fresh_process.run(sys.exit, 3) == 3
    assert fresh_process.run(print, "a run that finishes") == 0
