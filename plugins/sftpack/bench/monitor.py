"""Run one command as a subprocess and measure it from outside: wall time, exit, peak memory.

    from sftpack.bench.monitor import run_measured
    m = run_measured(["llamafactory-cli", "train", "cfg.yaml"], cwd, env, log_path, timeout_s=600)

What each memory figure measures (also written into every result.json as `memory_measures`):
- `peak_rss_largest_process_mib`: the largest single process's max RSS in the run's tree, from the kernel's own
  high-water mark: `os.wait4` rusage of the child (= `getrusage(RUSAGE_CHILDREN)` of a fresh parent, the figure
  `/usr/bin/time -v` prints). Exact, not sampled. Descendants count only if they were waited for. Linux carries
  the forking parent's high-water mark across exec, so the harness's own RSS (~22 MiB, kept small on purpose:
  no torch in the harness) is a floor of this figure.
- `peak_pss_tree_mib`: the largest sum of PSS over the whole process tree (psutil `memory_full_info().pss`):
  shared pages are divided among their sharers, so forked workers are not double-counted. Sampled within a CPU
  budget (0.5 % of one core; see TreeSampler), first when the tree's RSS reaches a new high, so a
  spike between samples can be missed: the largest process's exact peak is the figure above.
- `peak_rss_sum_tree_mib`: the tree's summed RSS, every `interval_s` (double-counts shared pages; for contrast).
- GPU (only when a GPU is present; NVML via nvidia-ml-py, imported lazily): `peak_gpu_tree_nvml_mib` = the
  largest sum over devices of the memory NVML attributes to the tree's processes (includes the CUDA context and
  the caching allocator's reserved blocks); `peak_gpu_device_used_nvml_mib` = device-wide used memory summed
  over devices (every process on them), with `gpu_device_used_baseline_nvml_mib` measured just before the start.

The child runs in its own session (process group): a timeout kills the whole group (SIGTERM, then SIGKILL), and
anything left of the group after the child exits is killed too. Output goes straight to `log_path` (no Python
copy loop), unless `echo` is set.

Clean ends: this module is where every long-running child of sftpack starts (training, lm_eval, the tiny-model
build: `frameworks.run_logged` comes here too). Each child's group is registered while it runs and killed on every
way out of `run_measured` -- normal exit (leftovers), timeout, an exception, Ctrl-C, SIGTERM or SIGHUP (which
`install_stop_handlers` turns into `Interrupted`, a KeyboardInterrupt) -- and `end_groups()` kills whatever is
still registered (the CLI calls it last, on every exit). On Linux the child also gets SIGTERM from the kernel
when sftpack itself dies (PR_SET_PDEATHSIG), so even `kill -9 sftpack` leaves no training or lm_eval behind.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

MIB = 1024 * 1024
PSS_BUDGET = 0.005   # share of one core the PSS samples may use (each walks the page tables)
KILL_GRACE_S = 10.0


class Nvml:
    """Device-wide and per-process GPU memory through NVML (nvidia-ml-py), imported only when used."""

    def __init__(self, pynvml: Any, handles: list):
        self._nvml = pynvml
        self.handles = handles

    @classmethod
    def open(cls) -> tuple["Nvml | None", str | None]:
        """(Nvml, None) when NVML works and sees a GPU, else (None, why not)."""
        try:
            import pynvml
        except ImportError:
            return None, "nvidia-ml-py (pynvml) is not installed"
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as err:
            return None, f"NVML unavailable: {err}"
        if count == 0:
            return None, "NVML sees no GPU"
        return cls(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]), None

    def device_names(self) -> list[str]:
        names = [self._nvml.nvmlDeviceGetName(h) for h in self.handles]
        return [n.decode() if isinstance(n, bytes) else n for n in names]

    def device_used_bytes(self) -> int:
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles)

    def tree_used_bytes(self, pids: set[int]) -> int | None:
        """Memory NVML attributes to `pids` over all devices; None when none of them is listed (e.g. NVML
        reports host PIDs from inside a container, or the driver does not expose per-process memory)."""
        total, matched = 0, False
        for handle in self.handles:
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory is not None:
                    total += proc.usedGpuMemory
                    matched = True
        return total if matched else None

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


class TreeSampler(threading.Thread):
    """Samples the process tree under `pid` until stopped, within a CPU budget.

    Every `interval_s`: the tree's summed RSS (cheap: /proc/<pid>/statm) and, on GPU, NVML. PSS needs the kernel
    to walk the page tables (/proc/<pid>/smaps_rollup: ~11 ms of CPU for a 900 MiB process), so it is taken
    from a token bucket that refills at `pss_budget` (fraction of one core) and is spent first when the RSS sum
    reaches a new high - where the PSS peak is. The tree itself (a scan of /proc) is refreshed every second.
    """

    TREE_REFRESH_S = 1.0
    RISE = 1.01   # an RSS sum 1 % above the one at the last PSS sample counts as a new high

    def __init__(self, pid: int, interval_s: float, nvml: Nvml | None = None, pss_budget: float = PSS_BUDGET):
        super().__init__(name="sftpack-bench-sampler", daemon=True)
        import psutil

        self._psutil = psutil
        self.root_pid = pid
        self.interval_s = interval_s
        self.nvml = nvml
        self.pss_budget = pss_budget
        self._stop_event = threading.Event()
        self._procs: list = []
        self._tree_at = -1e9
        self.started = time.monotonic()
        self.timeline: list[tuple] = []   # (t_s, pss_tree_b | None, rss_sum_b, processes, gpu_tree_b, gpu_device_b)
        self.peak_pss = self.peak_rss_sum = self.max_processes = 0
        self.pss_samples = 0
        self.peak_gpu_tree: int | None = None
        self.peak_gpu_device: int | None = None
        self.gpu_baseline = nvml.device_used_bytes() if nvml else None
        self.cpu_s = 0.0
        self.errors = 0
        self._tokens = 10 * pss_budget  # seconds of CPU the next PSS samples may spend (bucket)
        self._pss_cost = 0.002         # last measured CPU cost of one PSS sample of the tree
        self._rss_at_last_pss = 0
        self._last_pss_at = -1e9

    def _tree(self, now: float) -> list:
        psutil = self._psutil
        if now - self._tree_at >= self.TREE_REFRESH_S or not self._procs:
            self._tree_at = now
            try:
                root = psutil.Process(self.root_pid)
                known = {p.pid: p for p in self._procs}  # keep Process objects (their create time is cached)
                self._procs = [known.get(p.pid, p) for p in [root] + root.children(recursive=True)]
            except psutil.Error:
                self._procs = []
        return self._procs

    def sample(self, dt: float = 0.0) -> None:
        psutil = self._psutil
        now = time.monotonic()
        procs = self._tree(now)
        alive, rss = [], 0
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                alive.append(proc)
            except psutil.Error:
                continue
        if not alive:
            return
        self._tokens = min(self._tokens + dt * self.pss_budget, max(5 * self._pss_cost, 0.05))
        pss = None
        rising = rss > self._rss_at_last_pss * self.RISE
        if self._tokens >= self._pss_cost and (rising or now - self._last_pss_at >= 1.0):
            cpu0 = time.thread_time()
            pss = 0
            for proc in alive:
                try:
                    pss += proc.memory_full_info().pss
                except psutil.Error:
                    continue
            self._pss_cost = time.thread_time() - cpu0
            self._tokens -= self._pss_cost
            self._rss_at_last_pss, self._last_pss_at = rss, now
            self.pss_samples += 1
            self.peak_pss = max(self.peak_pss, pss)
        gpu_tree = gpu_device = None
        if self.nvml is not None:
            try:
                gpu_tree = self.nvml.tree_used_bytes({p.pid for p in alive})
                gpu_device = self.nvml.device_used_bytes()
            except Exception:  # noqa: BLE001 - an NVML hiccup must not end the run's measurement
                self.errors += 1
        self.peak_rss_sum = max(self.peak_rss_sum, rss)
        self.max_processes = max(self.max_processes, len(alive))
        if gpu_tree is not None:
            self.peak_gpu_tree = max(self.peak_gpu_tree or 0, gpu_tree)
        if gpu_device is not None:
            self.peak_gpu_device = max(self.peak_gpu_device or 0, gpu_device)
        self.timeline.append((round(now - self.started, 3), pss, rss, len(alive), gpu_tree, gpu_device))

    def run(self) -> None:
        start_cpu = time.thread_time()
        last = time.monotonic()
        while not self._stop_event.is_set():
            now = time.monotonic()
            self.sample(now - last)
            last = now
            self._stop_event.wait(self.interval_s)
        self.cpu_s = time.thread_time() - start_cpu

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Measured:
    """What run_measured observed from outside the process."""

    exit_code: int | None            # negative: killed by that signal
    wall_s: float
    timed_out: bool
    peak_rss_largest_process_mib: float | None
    cpu_user_s: float | None = None      # user CPU of the child and the descendants it waited for (rusage)
    cpu_system_s: float | None = None
    load_avg_1m_before: float | None = None
    load_avg_1m_after: float | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    timeline: list = field(default_factory=list)

    @property
    def signal_name(self) -> str | None:
        if self.exit_code is not None and self.exit_code < 0:
            try:
                return signal.Signals(-self.exit_code).name
            except ValueError:
                return f"signal {-self.exit_code}"
        return None


# -- clean ends: signals, the groups of the children, the kernel's parent-death signal ------------------------
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
_GROUPS: set[int] = set()   # process groups started by run_measured and not ended yet


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP, raised in the main thread so that every `finally` runs and every child group is
    killed on the way out. `exit_code` is the shell's 128 + signal number (130, 143, 129)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"signal {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def install_stop_handlers() -> dict[int, Any]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted (also when a non-interactive shell started us with SIGINT
    ignored; SIGHUP stays ignored under nohup). Returns the previous handlers for `restore_handlers`."""
    previous: dict[int, Any] = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            previous[sig] = signal.signal(sig, _raise_interrupted)
        except ValueError:   # not the main thread (e.g. a test's worker thread): signals stay as they are
            pass
    return previous


def ignore_stop_signals() -> None:
    """While the last line is printed on the way out: a second Ctrl-C or SIGTERM does not interrupt it."""
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                signal.signal(sig, signal.SIG_IGN)
            except ValueError:
                pass


def restore_handlers(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except ValueError:
            pass


def end_groups(sig: int = signal.SIGKILL) -> list[int]:
    """Kill every child process group still registered (none when every run ended normally); returns them."""
    ended = sorted(_GROUPS)
    for pgid in ended:
        _kill_group(pgid, sig)
        _GROUPS.discard(pgid)
    return ended


def concurrently(calls: list[Callable[[], Any]], workers: int, name: str = "run") -> list[Any]:
    """Run `calls` in up to `workers` threads (each typically drives one child through run_measured); return their
    results in order, an exception in place of the result of a call that raised (every call runs to its end).

    Signals reach only the main thread, which waits here: on Ctrl-C, SIGTERM or SIGHUP (Interrupted) every child
    group still registered is ended first, so the threads waiting on them return, and only then is the exception
    raised -- the run never hangs on, or leaves behind, the children of the other threads."""
    from concurrent.futures import ThreadPoolExecutor

    def guarded(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as err:   # noqa: BLE001 - handed back in place of the result
            return _Raised(err)

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name)
    try:
        futures = [pool.submit(guarded, call) for call in calls]
        results = [future.result() for future in futures]
    except BaseException:
        end_groups(signal.SIGKILL)   # the other threads' children: their waits return, the threads end
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [r.error if isinstance(r, _Raised) else r for r in results]


@dataclass
class _Raised:
    error: Exception


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _parent_death_signal():
    """A preexec_fn that asks the kernel to SIGTERM the child when this process dies (Linux), else None."""
    if _PRCTL is None:
        return None
    prctl, parent, term = _PRCTL, os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(1, term, 0, 0, 0)   # PR_SET_PDEATHSIG
        if os.getppid() != parent:   # the parent died before prctl: nobody would send the signal
            os.kill(os.getpid(), term)
    return preexec


def _echo_pipe(stream, log, failures: list[OSError]) -> None:
    """Copy the child's output to the log and the terminal. A full disk (log) or a closed terminal (stdout) stops
    that copy, not the run: the pipe is drained to the end (the child never blocks) and the error is kept."""
    to_log, to_terminal = True, True
    for line in stream:
        if to_log:
            try:
                log.write(line)
                log.flush()
            except OSError as err:
                failures.append(err)
                to_log = False
        if to_terminal:
            try:
                sys.stdout.write(line)
            except (OSError, ValueError):   # a closed or broken stdout
                to_terminal = False


def run_measured(cmd: list[str], cwd: Path, env: Mapping[str, str], log_path: Path, timeout_s: float | None,
                 interval_s: float = 0.2, sample: bool = True, nvml: Nvml | None = None,
                 echo: bool = False, pss_budget: float = PSS_BUDGET) -> Measured:
    """Run `cmd` (output to `log_path`), sampling its process tree unless `sample` is False (the bare run).

    `timeout_s` None: no timeout. Whatever way this returns or raises, the child's whole group is gone."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8", errors="replace") as log:
        log.write("$ " + " ".join(map(str, cmd)) + f"\n# cwd: {cwd}\n")
        log.flush()
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if echo else log, stderr=subprocess.STDOUT,
                                start_new_session=True, text=echo, errors="replace" if echo else None,
                                preexec_fn=_parent_death_signal())
        _GROUPS.add(proc.pid)
        sampler = reader = watchdog = None
        log_failures: list[OSError] = []
        timed_out = threading.Event()

        def _on_timeout() -> None:
            timed_out.set()
            _kill_group(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + KILL_GRACE_S
            while time.monotonic() < deadline and proc.returncode is None:
                time.sleep(0.2)
            _kill_group(proc.pid, signal.SIGKILL)

        try:
            sampler = TreeSampler(proc.pid, interval_s, nvml, pss_budget) if sample else None
            if sampler is not None:
                sampler.start()
            if echo:
                reader = threading.Thread(target=_echo_pipe, args=(proc.stdout, log, log_failures), daemon=True)
                reader.start()
            if timeout_s is not None:
                watchdog = threading.Timer(timeout_s, _on_timeout)
                watchdog.daemon = True
                watchdog.start()
            _, status, usage = os.wait4(proc.pid, 0)
            wall_s = time.monotonic() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            _kill_group(proc.pid, signal.SIGKILL)  # leftovers of the run's group (orphaned workers)
            _GROUPS.discard(proc.pid)
            if sampler is not None:
                sampler.stop()
            if reader is not None:
                reader.join(timeout=5)
    if log_failures:
        err = log_failures[0]
        raise type(err)(err.errno, err.strerror, str(log_path))
    # ru_maxrss is KiB on Linux, bytes on macOS
    maxrss_mib = usage.ru_maxrss / (MIB if sys.platform == "darwin" else 1024)
    result = Measured(exit_code=proc.returncode, wall_s=wall_s, timed_out=timed_out.is_set(),
                      peak_rss_largest_process_mib=maxrss_mib or None, cpu_user_s=usage.ru_utime,
                      cpu_system_s=usage.ru_stime, load_avg_1m_before=load_before,
                      load_avg_1m_after=os.getloadavg()[0])
    if sampler is not None:
        result.sampler = {
            "interval_s": interval_s, "samples": len(sampler.timeline), "pss_samples": sampler.pss_samples,
            "pss_budget_of_one_core": pss_budget, "cpu_s": sampler.cpu_s,
            "peak_pss_tree_mib": sampler.peak_pss / MIB if sampler.pss_samples else None,
            "peak_rss_sum_tree_mib": sampler.peak_rss_sum / MIB if sampler.timeline else None,
            "max_tree_processes": sampler.max_processes if sampler.timeline else None,
            "peak_gpu_tree_nvml_mib": sampler.peak_gpu_tree / MIB if sampler.peak_gpu_tree is not None else None,
            "peak_gpu_device_used_nvml_mib": (sampler.peak_gpu_device / MIB
                                              if sampler.peak_gpu_device is not None else None),
            "gpu_device_used_baseline_nvml_mib": (sampler.gpu_baseline / MIB
                                                  if sampler.gpu_baseline is not None else None),
            "errors": sampler.errors,
        }
        result.timeline = sampler.timeline
    return result


def harness_rss_mib() -> float:
    """This (harness) process's own peak RSS so far: VmHWM of its address space.

    Not getrusage(RUSAGE_SELF): Linux carries the pre-exec image's high-water mark across exec, so a harness
    started from a big process (pytest with torch imported) would report that process's RSS.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (MIB if sys.platform == "darwin" else 1024)
