"""Shared by the bench scripts: run a command and measure its wall time and the peak RSS of its whole process tree."""
import subprocess, sys, time
import psutil


def run_measured(cmd, env):
    "Run `cmd`; return (wall seconds, peak summed RSS of its process tree in bytes)."
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            rss = 0
            for p in procs:
                try: rss += p.memory_info().rss
                except psutil.Error: pass
            peak = max(peak, rss)
        except psutil.Error: pass
        time.sleep(0.05)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f'{cmd[0]} failed:\n{proc.stderr.read().decode()[-3000:]}')
    return wall, peak
