# The floor of a publish and an unpublish: util-linux `mount --bind SOURCE TARGET` and
# `umount TARGET`, each started with posix_spawn by a small parent and waited for, the way any
# program that runs `mount` pays for it. Usage: python3 floor.py SOURCE TARGET RUNS; prints one
# JSON object, {"mount": [ms, ...], "umount": [ms, ...]}.
import json
import os
import shutil
import sys
import time

source, target, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
# The environment the driver gives the commands.
env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
mount, umount = shutil.which("mount", path=env["PATH"]), shutil.which("umount", path=env["PATH"])
null = os.open(os.devnull, os.O_RDWR)
actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1)]


def timed(argv):
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - started) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(argv)} failed")
    return elapsed


times = {"mount": [], "umount": []}
for _ in range(runs):
    times["mount"].append(timed([mount, "--bind", source, target]))
    times["umount"].append(timed([umount, target]))
print(json.dumps(times))
