"""The Celery intro post's multiply service, with zcell's imports.

One file is both the service and its client, as in the post::

    zcell worker -A examples.multiply     # terminal 1: the service
    python examples/multiply.py           # terminal 2: the client

The client waits a second for a worker of the mesh (found by mDNS); if none
answers, it starts one itself in a child process (``zcell worker -A
examples.multiply``) and stops it when done. Give ``--cluster NAME`` to both to
use a mesh of your own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from zcell import App, CallTimeout

# Celery's version needs a broker and a result backend:
#   app = Celery('tasks', broker='redis://localhost:6379/0', backend='redis://localhost:6379/0')
# zcell needs neither (it would accept both, and warn that it ignores them).
app = App("tasks")

#: The queue's consumer type: a worker of the mesh hosts one (docs/tasks.md).
CONSUMER = "zcell.queue.celery"
#: Seconds the client waits for a worker before it starts one.
FIND_WORKER = 1.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The task's name is the post's, whether this file runs as a script ("__main__")
# or is imported by the worker as examples.multiply.
@app.task(name="tasks.multiply")
def multiply(a: int, b: int) -> int:
    return a * b


def start_worker(cluster: str) -> subprocess.Popen[bytes]:
    """``zcell worker -A examples.multiply`` in a child process of this mesh."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "zcell", "worker", "-A", "examples.multiply"]
    argv += ["--cluster", cluster, "--name", "multiply-worker", "-c", "2"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def find_or_start_worker(cluster: str) -> subprocess.Popen[bytes] | None:
    """A worker of the mesh within a second, else one started here (returned)."""
    try:
        app.node.wait_for(type=CONSUMER, timeout=FIND_WORKER)
        print("worker: found one in the mesh")
        return None
    except CallTimeout:
        print("worker: none found within a second; starting zcell worker -A examples.multiply")
    worker = start_worker(cluster)
    app.node.wait_for(type=CONSUMER, timeout=30.0)
    return worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The intro post's multiply service.")
    parser.add_argument("--cluster", default="zcell", help="mesh to join (default: zcell)")
    args = parser.parse_args(argv)
    app.conf.update(cluster=args.cluster)
    worker = find_or_start_worker(args.cluster)
    try:
        promise = multiply.delay(4, 5)
        print(f"multiply.delay(4, 5) = {promise.get(timeout=10)} (ran on {promise.worker})")
        promise = app.send_task("tasks.multiply", args=[2, 2])
        value = promise.get(timeout=10)
        print(f"app.send_task('tasks.multiply', args=[2, 2]) = {value} (ran on {promise.worker})")
        print(f"multiply(6, 7) = {multiply(6, 7)} (ran here: no message)")
    finally:
        app.close()
        if worker is not None:
            worker.terminate()  # SIGTERM: the worker stops gracefully
            worker.wait(timeout=15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
