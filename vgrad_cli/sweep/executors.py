"""Sweep executors: where the points run.

Both take jobs as (index, resolved config dict) and call on_result(index, run_dir, error) in the
driver process once per finished job; the driver then writes the sweep.csv row. A job that fails is
reported with its error and never stops the others. Ctrl-C: workers stop, finished rows stay, and
KeyboardInterrupt reaches the caller.

- LocalExecutor: worker processes on this machine ('spawn': a fork after torch is loaded can
  deadlock), one torch thread each so N workers use N cores without fighting. Runs write straight
  into the sweep directory.
- RayExecutor: one Ray task per job. The task runs in a temporary directory on whichever node Ray
  picks and returns the run directory's files as bytes; the driver writes them into the sweep
  directory. No shared disk is assumed.
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import socket
import tempfile
from pathlib import Path

from ..errors import UsageError


_warm = False


def warm_up():
    """Pay a worker's one-off costs before its first run, not inside that run's wall time: imports,
    autograd's first backward, and the first optimizer, which imports torch._dynamo (~1.5 s)."""
    global _warm
    if _warm:
        return
    import torch

    from ..training import runner  # noqa: F401

    w = torch.ones(2, requires_grad=True)
    w.sum().backward()
    torch.optim.SGD([w], lr=0.1).step()
    _warm = True


def execute_point(config: dict, out_root: str, stop=None) -> tuple[str | None, str | None]:
    """Run one job in this process: (run directory or None, error or None). Never raises on a
    failed run: run_experiment has already recorded it in the run's summary.json (status failed)."""
    import torch

    torch.set_num_threads(1)
    from ..config import validate
    from ..training.runner import run_experiment

    started: dict = {}

    def on_start(path, cfg):
        started["dir"] = str(path)

    def on_log(step, metrics, rows):
        # A stop requested between two runs reaches a run that had not yet installed its signal
        # handler: the training loop's own SIGINT handling then ends it cleanly as "interrupted".
        if stop is not None and stop.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    try:
        run_dir, _ = run_experiment(validate(config), out_root, on_start=on_start, on_log=on_log)
        return str(run_dir), None
    except Exception as e:  # noqa: BLE001 - any failure is this point's result, not the sweep's
        return started.get("dir"), f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------- local processes


def _worker_main(tasks, results, stop, out_root: str, parent: int):
    """A worker process: take jobs until the None sentinel, a stop request, or the driver's death."""
    # Before torch loads, so its thread pools start at one thread.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    # Ctrl-C in a terminal reaches every process of the group. Outside a run the driver decides
    # (through `stop`); inside a run the training loop's handler turns it into a clean "interrupted".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up()
    pid = os.getpid()
    while not stop.is_set():
        try:
            job = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the driver was killed (SIGKILL): nobody will read results
                break
            continue
        if job is None or stop.is_set():
            break
        index, config = job
        results.put(("start", pid, index, None))
        results.put(("done", pid, index, execute_point(config, out_root, stop)))


class LocalExecutor:
    def __init__(self, workers: int):
        self.workers = workers

    def describe(self) -> str:
        return f"local executor, {self.workers} worker process{'es' if self.workers != 1 else ''}"

    def run(self, jobs: list[tuple[int, dict]], sweep_dir: Path, on_result):
        import multiprocessing as mp

        if not jobs:
            return
        ctx = mp.get_context("spawn")
        tasks, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        for job in jobs:
            tasks.put(job)
        procs: dict[int, object] = {}

        def start_worker():
            p = ctx.Process(target=_worker_main, args=(tasks, results, stop, str(sweep_dir), os.getpid()),
                            daemon=True)
            p.start()
            procs[p.pid] = p
            tasks.put(None)  # one sentinel per worker, behind the jobs

        for _ in range(min(self.workers, len(jobs))):
            start_worker()
        left = {index for index, _ in jobs}
        running: dict[int, int] = {}  # worker pid -> job index
        idle_deaths = 0
        old_term = _sigterm_as_interrupt()
        try:
            while left:
                try:
                    kind, pid, index, payload = results.get(timeout=0.5)
                except queue.Empty:
                    idle_deaths += self._reap(procs, running, left, on_result, start_worker)
                    if idle_deaths > 2 * self.workers:
                        raise RuntimeError("sweep worker processes keep exiting before taking a job") from None
                    continue
                if kind == "start":
                    running[pid] = index
                else:
                    running.pop(pid, None)
                    left.discard(index)
                    run_dir, error = payload
                    on_result(index, Path(run_dir) if run_dir else None, error)
        except KeyboardInterrupt:
            self._interrupt(procs, running, left, results, stop, on_result)
            raise
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            tasks.cancel_join_thread()  # jobs never taken (after Ctrl-C) must not block our exit
            if left:  # stopped early: make sure no worker outlives us
                for p in procs.values():
                    p.join(timeout=10)
                    if p.is_alive():
                        p.kill()
            # else every worker has taken its sentinel and is exiting (torch's teardown takes ~0.5 s):
            # no need to wait for that before the report; multiprocessing reaps them.

    @staticmethod
    def _reap(procs, running, left, on_result, start_worker) -> int:
        """Workers that died (killed, out of memory): their job is recorded as failed and a fresh
        worker takes their place. Returns how many died while holding no job."""
        idle = 0
        for pid, p in list(procs.items()):
            if p.is_alive():
                continue
            del procs[pid]
            index = running.pop(pid, None)
            if index is not None:
                left.discard(index)
                on_result(index, None, f"worker process died (exit code {p.exitcode})")
            else:
                idle += p.exitcode != 0  # a sentinel ends a worker with 0: that is not a death
            if p.exitcode != 0 and len(left) > len(running):  # jobs wait that no worker may take
                start_worker()
        return idle

    @staticmethod
    def _interrupt(procs, running, left, results, stop, on_result):
        """First Ctrl-C: no new runs; running ones end cleanly as "interrupted" and get their rows.
        A second Ctrl-C stops waiting (rows already written stay valid)."""
        stop.set()
        for pid, p in procs.items():
            if p.is_alive() and pid in running:
                os.kill(pid, signal.SIGINT)  # also when only the driver got the signal (kill -INT)
        try:
            while running and any(p.is_alive() for p in procs.values()):
                try:
                    kind, pid, index, payload = results.get(timeout=0.5)
                except queue.Empty:
                    continue
                if kind == "start":  # raced the stop; the run notices it at its first logged step
                    running[pid] = index
                else:
                    running.pop(pid, None)
                    left.discard(index)
                    on_result(index, Path(payload[0]) if payload[0] else None, payload[1])
        except KeyboardInterrupt:
            pass
        for p in procs.values():
            if p.is_alive():
                p.kill()


def _sigterm_as_interrupt():
    """SIGTERM (a batch system, `kill`) gets the same clean stop as Ctrl-C. Returns the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


# ----------------------------------------------------------------------------- Ray


def _ray_task(config: dict) -> dict:
    """Runs on a Ray worker: the experiment in a temporary directory, then the files as bytes."""
    warm_up()  # once per Ray worker process: Ray reuses them for later tasks
    with tempfile.TemporaryDirectory(prefix="vgrad-sweep-") as tmp:
        run_dir, error = execute_point(config, tmp)
        files = {}
        if run_dir:
            root = Path(run_dir)
            files = {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}
        return {"name": Path(run_dir).name if run_dir else None, "files": files, "error": error,
                "host": socket.gethostname()}


def _check_reachable(address: str):
    """A quick TCP check, so that a wrong address is a one-line error, not a long retry loop."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address '{address}': expected HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UsageError(
            f"cannot reach the Ray cluster at '{address}': {e.strerror or e}; is it running (ray start --head)?"
        ) from None


class RayExecutor:
    def __init__(self, address: str | None, workers: int | None):
        self.address, self.workers = address, workers
        self.owned = False  # did we start/connect Ray (then we shut it down), or was it already up?
        self.ray = None

    def describe(self) -> str:
        res = self.ray.cluster_resources() if self.ray else {}
        where = self.address or "a local Ray instance"
        return f"Ray executor on {where} ({int(res.get('CPU', 0))} CPUs)"

    def connect(self):
        """Import Ray and connect; every problem is a UsageError, raised before anything is written."""
        try:
            import ray
        except ImportError:
            raise UsageError(
                "--executor ray needs Ray, which is not installed: pip install 'vgrad[ray]' "
                "(in a checkout: pip install -e '.[ray]')"
            ) from None
        self.ray = ray
        if self.address:
            _check_reachable(self.address)
        if ray.is_initialized():  # a caller (a test, a notebook) already connected: use that as is
            return
        import logging

        # Ray's own INFO/WARNING lines (token auth notices...) would bury the sweep's output.
        kwargs: dict = {"log_to_driver": False, "logging_level": logging.ERROR}
        if self.address:
            # The cluster runs this very vgrad code: ship the package (torch etc. must be there).
            kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).parent)]}
        else:  # "local": always a fresh instance of our own; a running cluster is --address auto
            kwargs.update(num_cpus=self.workers or os.cpu_count(), include_dashboard=False)
        try:
            ray.init(address=self.address or "local", **kwargs)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if not self.address:
                raise UsageError(f"cannot start a local Ray instance: {first}") from None
            raise UsageError(  # reachable but refused: most often Ray's token authentication
                f"cannot connect to the Ray cluster at '{self.address}': {first}; if the cluster uses token "
                "authentication, set RAY_AUTH_MODE=token (the token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
            ) from None
        self.owned = True

    def run(self, jobs: list[tuple[int, dict]], sweep_dir: Path, on_result):
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=1)(_ray_task)
        limit = self.workers or len(jobs)  # --workers caps the tasks in flight; Ray schedules them
        waiting = list(jobs)
        pending: dict = {}  # ObjectRef -> job index
        try:
            while waiting or pending:
                while waiting and len(pending) < limit:
                    index, config = waiting.pop(0)
                    pending[task.remote(config)] = index
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index = pending.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        on_result(index, None, f"Ray task failed: {(str(e).strip().splitlines() or ['?'])[0]}")
                        continue
                    run_dir = self._materialize(sweep_dir, out) if out["name"] else None
                    on_result(index, run_dir, out["error"])
        except KeyboardInterrupt:
            for ref in pending:  # the runs in flight are lost; --resume runs them again
                ray.cancel(ref)
            raise
        finally:
            if self.owned:
                ray.shutdown()

    @staticmethod
    def _materialize(sweep_dir: Path, out: dict) -> Path:
        """Write a returned run directory into the sweep directory; it appears whole (rename)."""
        tmp = sweep_dir / f".incoming-{out['name']}-{secrets.token_hex(3)}"  # hidden until complete
        tmp.mkdir()
        for rel, data in out["files"].items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        dest = sweep_dir / out["name"]
        n = 1
        while dest.exists():  # same name from two nodes in the same second: keep both
            n += 1
            dest = sweep_dir / f"{out['name']}-{n}"
        os.replace(tmp, dest)
        return dest
