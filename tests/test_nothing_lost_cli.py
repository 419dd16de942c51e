"""Issue 11 on the command line: one lock per output (`run`, `bench`, `eval`), clean ends (every child process
group ended on every way out), every OS error one line, a path is a path. Real processes, real signals, real files:
each test starts `python -m sftpack ...` and checks what a user would see and what is left on disk.

    .venv/bin/python -m pytest -n 2 tests/test_nothing_lost_cli.py -m "not integration"   # ~16 s on 2 cores
    .venv/bin/python -m pytest -n 2 tests/test_nothing_lost_cli.py -m integration   # real lm_eval and LF runs, ~15 s

| hostile class | what is tried | test |
| --- | --- | --- |
| two commands, one output | a second `run` on one `--out`, a second `bench` on one `--results` or `--work`, a second `eval` on one `--out` | `test_second_run_...`, `test_second_bench_...`, `test_a_signal_to_eval_...`, `test_sigterm_during_training_...` |
| signals | SIGTERM, SIGINT, SIGHUP and SIGKILL to `eval` (lm_eval running), SIGTERM to `run` (tiny-model build, training) and `bench` (setup, training) | `test_a_signal_to_eval_...`, `test_second_run_...`, `test_second_bench_...`, `test_sigterm_during_training_...` |
| OS errors | `--out` a file, under a file, read-only (chmod, or chattr +i as root), a full disk (tmpfs, else RLIMIT_FSIZE) for prepare, recipe, eval, run, bench | `test_every_os_error_is_one_line` |
| model paths | `./m`, `work/tinyy`, `x.safetensors`, `~/...`, a file, a folder without config.json, an adapter as --model, a hub id offline, in eval, pipelines and suites | `test_a_missing_local_model_is_not_found_at_once`, `test_model_location_*` |
| stale markers | a done.json edited into invalid JSON | `test_an_unreadable_done_json_reruns_the_stage` |

Running as root (permissions do not apply): the read-only case uses `chattr +i`, and skips with a reason only
where that is unavailable; the full disk is a 64 KiB tmpfs when mounting is allowed, else a file size limit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml
from sftpack import frameworks as fw
from sftpack.errors import SftpackError
from sftpack.frameworks.common import model_location
from sftpack.locks import LOCK_NAME, hold

PY = sys.executable
REPO = fw.REPO_ROOT
PIPELINE = REPO / "benchmarks" / "pipelines" / "tiny_cpu.yaml"
SUITE = REPO / "benchmarks" / "suites" / "cpu_tiny.yaml"
USER_BYTES = "my own notes, not sftpack's\n".encode()
EXIT = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


# -- helpers ---------------------------------------------------------------------------------------------------
def sftpack(*args, cwd: Path, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "sftpack", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def _terminal_signals() -> None:
    """In the child: SIGHUP as a terminal session has it, even when the tests run under nohup (which ignores it,
    and sftpack then keeps ignoring it on purpose)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "sftpack", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_terminal_signals)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one-line error of a failed command: exit 1, no traceback, the last stderr line."""
    assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("sftpack: error: "), done.stderr[-3000:]
    assert len([x for x in done.stderr.splitlines() if x.startswith("sftpack: error:")]) == 1, done.stderr
    return line


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def holder_pid(folder: Path) -> int | None:
    try:
        return json.loads((folder / LOCK_NAME).read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


SEEN: list[psutil.Process] = []   # every child seen, killed at teardown if a test failed to end it


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    for proc in SEEN:
        try:
            proc.kill()
        except psutil.Error:
            pass
    SEEN.clear()


def tree(pid: int) -> list[psutil.Process]:
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    SEEN.extend(found)
    return found


def matching(pid: int, text: str) -> list[psutil.Process]:
    """The processes under `pid` whose command line contains `text`. A process that ends between the listing and
    the reading of its command line (gone, or a zombie not yet reaped) is skipped, not an error."""
    found = []
    for proc in tree(pid):
        try:
            if text in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def survivors(procs: list[psutil.Process]) -> list[str]:
    """The processes of `procs` still running (zombies count as ended: their parent is gone)."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            continue
    return left


def stop(proc: subprocess.Popen, name: str) -> tuple[str, list[str]]:
    """Send signal `name` to `proc`, wait for it; (stderr, its descendants still alive 1 s later)."""
    children = tree(proc.pid)
    proc.send_signal(getattr(signal, name))
    _, err = proc.communicate(timeout=120)
    time.sleep(1.0)
    return err, survivors(children)


def assert_interrupted(proc: subprocess.Popen, err: str, name: str, left: list[str]) -> None:
    assert not left, f"left running after {name}: {left}"
    assert proc.returncode == EXIT[name], (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"sftpack: interrupted ({name})"), err[-2000:]


def pipeline_file(folder: Path, model: dict, frameworks=("llamafactory", "swift"), **overrides) -> Path:
    data = yaml.safe_load(PIPELINE.read_text(encoding="utf-8"))
    data["model"] = model
    data["train"] = [t for t in data["train"] if t["framework"] in frameworks]
    for train in data["train"]:
        train["overrides"].update(overrides)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def eval_workdir(tmp_path_factory) -> Path:
    """A folder holding dataset_info/ with the GSM8K sample: lm-eval's current directory."""
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS
    from sftpack.samples import sample_dir

    root = tmp_path_factory.mktemp("evalwork")
    prepare(CONVERTERS["gsm8k"], str(sample_dir("gsm8k")), root / "dataset_info", progress=False)
    return root


# -- locks and clean ends --------------------------------------------------------------------------------------
def test_second_run_on_the_same_out_fails_at_once_naming_the_first_and_sigterm_ends_the_first(tmp_path):
    """Two `sftpack run` on one --out once deleted each other's stages and both exited 0."""
    pipe = pipeline_file(tmp_path, {"path": None, "build_shape": "tiny", "seed": 0})
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_bytes(USER_BYTES)
    first = start("run", pipe, "--out", out, cwd=tmp_path)
    try:
        wait_for(lambda: holder_pid(out) == first.pid, 60, "the first run to hold the lock", first)
        started = time.monotonic()
        second = sftpack("run", pipe, "--out", out, cwd=tmp_path, timeout=120)
        line = error_line(second)
        assert f"pid {first.pid}" in line and "sftpack run" in line and str(out) in line, line
        assert "waiting" not in second.stderr and time.monotonic() - started < 60
        err, left = stop(first, "SIGTERM")
    finally:
        if first.poll() is None:
            first.kill()
    assert_interrupted(first, err, "SIGTERM", left)
    assert (out / "notes.txt").read_bytes() == USER_BYTES
    with hold(out, "test", wait=False):   # the kernel released the lock with its holder: nothing stale
        pass


def test_second_bench_on_the_same_results_or_work_fails_at_once_and_sigterm_ends_the_first(tmp_path, tiny_model):
    results, work = tmp_path / "results", tmp_path / "work"
    results.mkdir()
    (results / "notes.txt").write_bytes(USER_BYTES)
    args = [SUITE, "--only", "lf_full", "--repeats", "1", "--overhead-repeats", "0", "--set",
            f"model.path={tiny_model}", "--set", "defaults.llamafactory.max_steps=5000",
            "--set", "defaults.llamafactory.save_steps=5000"]
    first = start("bench", *args, "--results", results, "--work", work, cwd=tmp_path)
    try:
        wait_for(lambda: holder_pid(results) == first.pid and holder_pid(work) == first.pid, 60,
                 "the first bench to hold its locks", first)
        same_results = sftpack("bench", *args, "--results", results, "--work", tmp_path / "w2", cwd=tmp_path)
        same_work = sftpack("bench", *args, "--results", tmp_path / "r2", "--work", work, cwd=tmp_path)
        for done, folder in ((same_results, results), (same_work, work)):
            line = error_line(done)
            assert f"pid {first.pid}" in line and "sftpack bench" in line and str(folder) in line, line
        assert not (tmp_path / "w2").exists() or not any((tmp_path / "w2").iterdir())
        err, left = stop(first, "SIGTERM")
    finally:
        if first.poll() is None:
            first.kill()
    assert_interrupted(first, err, "SIGTERM", left)
    assert (results / "notes.txt").read_bytes() == USER_BYTES


@pytest.mark.integration   # a real lm_eval on the tiny model: the signal is sent once it runs
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL", "SIGTERM x5"])
def test_a_signal_to_eval_ends_lm_eval_and_a_second_eval_on_its_out_fails(tmp_path, tiny_model, eval_workdir, name):
    """SIGTERM to `sftpack eval` once left lm_eval running (on a GPU: holding its memory). SIGKILL cannot be
    caught: the kernel's parent-death signal ends lm_eval then."""
    out = tmp_path / "eval"
    args = ["eval", "--model", tiny_model, "--workdir", eval_workdir, "--tasks", "gsm8k-local-chat", "--limit", "200",
            "--device", "cpu", "--quiet", "--out", out]
    first = start(*args, cwd=tmp_path)
    try:
        lm_eval = wait_for(lambda: matching(first.pid, "lm_eval"), 120,
                           "lm_eval to start", first)
        if name == "SIGTERM":
            line = error_line(sftpack(*args, cwd=tmp_path))
            assert f"pid {first.pid}" in line and "sftpack eval" in line, line
        children = tree(first.pid)
        assert lm_eval[0] in children
        for _ in range(5 if name.endswith("x5") else 1):   # an impatient user: signal after signal
            first.send_signal(getattr(signal, name.split()[0]))
            time.sleep(0.01)
        _, err = first.communicate(timeout=120)
        deadline = time.monotonic() + 15
        while survivors(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = survivors(children)
    finally:
        if first.poll() is None:
            first.kill()
    if name == "SIGKILL":
        assert first.returncode == -signal.SIGKILL and not left, left
    elif name.endswith("x5"):   # a late one may find the default handler restored: killed by it, as the shell's 143
        assert first.returncode in (143, -signal.SIGTERM) and not left and "Traceback" not in err, (left, err[-2000:])
    else:
        assert_interrupted(first, err, name, left)


@pytest.mark.integration
def test_sigterm_during_training_in_run_ends_the_framework_and_keeps_finished_stages(tmp_path, tiny_model):
    pipe = pipeline_file(tmp_path, {"path": str(tiny_model), "seed": 0}, frameworks=("llamafactory",),
                         max_steps=100000, save_steps=100000)
    out = tmp_path / "project"
    first = start("run", pipe, "--out", out, cwd=tmp_path)
    try:
        wait_for(lambda: matching(first.pid, "llamafactory"), 300,
                 "LLaMA-Factory to start", first)
        kept = {name: files(out / name) for name in ("model", "data")}
        assert all((out / name / "done.json").is_file() for name in kept)
        line = error_line(sftpack("run", pipe, "--out", out, "--force", "model", cwd=tmp_path))
        assert f"pid {first.pid}" in line, line
        assert {name: files(out / name) for name in kept} == kept    # the second run deleted nothing
        time.sleep(3)
        err, left = stop(first, "SIGTERM")
    finally:
        if first.poll() is None:
            first.kill()
    assert_interrupted(first, err, "SIGTERM", left)
    assert {name: files(out / name) for name in kept} == kept
    result = json.loads((out / "train_llamafactory" / "result.json").read_text())
    assert result["status"] == "interrupted" and not (out / "train_llamafactory" / "done.json").exists()


# -- every OS error is one line --------------------------------------------------------------------------------
def _chattr(flag: str, folder: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(folder)], capture_output=True).returncode == 0


@contextmanager
def read_only(folder: Path):
    """`folder` (holding the user's file) that this user cannot write: chmod, or chattr +i as root."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield None
        finally:
            folder.chmod(0o755)
        return
    if not _chattr("+i", folder):
        pytest.skip("running as root (permissions do not apply) and `chattr +i` is not available here")
    try:
        yield None
    finally:
        _chattr("-i", folder)


@contextmanager
def full_disk(folder: Path):
    """`folder` on a full disk: a 64 KiB tmpfs with one page left (real ENOSPC) when mounting is allowed; else
    yields a preexec_fn limiting file sizes to 0 bytes (EFBIG, the same class of error)."""
    mounted = (os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode == 0)
    if not mounted:
        import resource

        (folder / "notes.txt").write_bytes(USER_BYTES)
        yield lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        return
    try:
        (folder / "notes.txt").write_bytes(USER_BYTES)
        with open(folder / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        size = (folder / "filler").stat().st_size
        os.truncate(folder / "filler", max(size - 4096, 0))   # one page left: a lock file fits, data does not
        yield None
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _command(name: str, out: Path, tiny_model: Path, eval_workdir: Path, folder: Path) -> list:
    from sftpack.samples import sample_dir

    sample = sample_dir("gsm8k")
    if name == "prepare":
        return ["prepare", "gsm8k", "--source", sample, "--quiet", "--out", out]
    if name == "recipe":
        recipe = folder / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({
            "inputs": [{"name": "g", "path": str(sample / "train.jsonl"), "converter": "gsm8k"}],
            "steps": [{"exact_dedup": {"fields": ["question"]}}],
            "output": {"name": "g_dedup", "columns": {"prompt": "question", "response": "answer"}}}))
        return ["recipe", recipe, "--quiet", "--out", out]
    if name == "eval":
        return ["eval", "--model", tiny_model, "--workdir", eval_workdir, "--tasks", "gsm8k-local-chat",
                "--limit", "1", "--device", "cpu", "--out", out]
    if name == "run":
        return ["run", pipeline_file(folder, {"path": str(tiny_model), "seed": 0}), "--out", out]
    return ["bench", SUITE, "--set", f"model.path={tiny_model}", "--results", out, "--work", folder / "work"]


@contextmanager
def blocked(kind: str, place: Path):
    """(--out to give, preexec_fn) for `place` holding the user's notes.txt, made unwritable in the way `kind` says."""
    if kind == "full_disk":
        with full_disk(place) as preexec:
            yield place / "out", preexec
        return
    (place / "notes.txt").write_bytes(USER_BYTES)
    if kind in ("file", "under_file"):
        yield (place / "notes.txt" if kind == "file" else place / "notes.txt" / "sub"), None
        return
    with read_only(place):
        yield (place if kind == "read_only" else place / "out"), None


@pytest.mark.parametrize("kind", ["file", "under_file", "read_only", "read_only_sub", "full_disk"])
@pytest.mark.parametrize("command", ["prepare", "recipe", "eval", "run", "bench"])
def test_every_os_error_is_one_line(tmp_path, tiny_model, eval_workdir, command, kind):
    """`--out` (bench: --results) that is a file, under a file, a read-only folder or inside one, or on a full
    disk: one line naming the path and the cause, exit 1, the user's file byte-identical, no temp file left."""
    place = tmp_path / "place"
    place.mkdir()
    with blocked(kind, place) as (out, preexec):
        before = files(place)
        done = sftpack(*_command(command, out, tiny_model, eval_workdir, tmp_path), cwd=tmp_path,
                       preexec_fn=preexec)
        line = error_line(done)
        after = files(place)
    assert "place" in line, line                                  # the path, as given or resolved
    assert after["notes.txt"] == USER_BYTES
    assert not [name for name in after if name.endswith(".tmp")], list(after)
    if kind != "full_disk":   # on a full disk a lock file or an empty log may be left; nothing else
        assert {k: v for k, v in after.items() if not k.endswith(LOCK_NAME)} == before, list(after)


def test_debug_shows_the_traceback_before_the_line(tmp_path, tiny_model, eval_workdir):
    (tmp_path / "afile").write_bytes(USER_BYTES)
    for cmd in (["--debug", "eval", "--model", tiny_model, "--out", "afile", "--workdir", eval_workdir],
                ["eval", "--model", tiny_model, "--out", "afile", "--workdir", eval_workdir, "--debug"],
                ["bench", SUITE, "--results", "afile", "--debug"]):
        done = sftpack(*cmd, cwd=tmp_path)
        assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == \
            f"sftpack: error: {tmp_path / 'afile'}: is a file, where a folder is needed", done.stderr[-500:]


# -- a path is a path ------------------------------------------------------------------------------------------
MISSING = ["./m", "work/tinyy", "x.safetensors", "~/no-such-sftpack-model", "Org/NoSuchModel"]


@pytest.mark.parametrize("name", MISSING + ["a_file", "no_config", "adapter"])
def test_a_missing_local_model_is_not_found_at_once(tmp_path, eval_workdir, name):
    """Local-looking model paths are local: "no such file or folder" at once, before any stage or run, never a hub
    lookup nor random weights (not even with build_shape); hub ids offline and not cached: "not found" too."""
    (tmp_path / "work").mkdir()                       # so `work/tinyy` is local: its first part exists here
    (tmp_path / "a_file").write_text("not a model")
    (tmp_path / "no_config").mkdir()
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    expected = {"a_file": "is a file", "no_config": "config.json", "adapter": "config.json",
                "Org/NoSuchModel": "hubs are off"}.get(name, "no such file or folder")
    started = time.monotonic()
    done = sftpack("eval", "--model", name, "--workdir", eval_workdir, "--out", "eval", cwd=tmp_path)
    line = error_line(done)
    assert f"--model {name}" in line and (expected in line or (name == "adapter" and "LoRA adapter" in line)), line
    pipe = pipeline_file(tmp_path, {"path": name, "build_shape": "tiny", "seed": 0})
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.read_text().replace("  build_shape: tiny", f"  path: {name}\n  build_shape: tiny"))
    if name == "Org/NoSuchModel":   # a hub id: with build_shape its fallback is declared and allowed
        pipe = pipeline_file(tmp_path, {"path": name, "seed": 0})
        suite.write_text(SUITE.read_text().replace("  build_shape: tiny", f"  path: {name}"))
    for cmd, key in ((["run", pipe, "--out", "project"], "pipeline.yaml:"),
                     (["bench", suite, "--results", "results", "--work", "work2"], "suite.yaml:")):
        line = error_line(sftpack(*cmd, cwd=tmp_path))
        assert key in line and "model.path" in line, line
        if name != "Org/NoSuchModel":
            assert "no such file or folder" in line or "not a model folder" in line, line
    assert time.monotonic() - started < 90
    assert not any((tmp_path / name).exists() for name in ("eval", "project", "results", "work2"))


def test_model_location_one_rule_hubs_on_off_and_cache(tmp_path, monkeypatch):
    online, offline = {}, {"HF_HUB_OFFLINE": "1"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    for name in ("./m", "work/tinyy", "x.safetensors", "a/b/c"):
        for environ in (online, offline):
            with pytest.raises(SftpackError, match="no such file or folder"):
                model_location(name, "--model", environ=environ)
    assert model_location("Org/Name", "--model", environ=online) == "Org/Name"      # tried only when hubs are on
    with pytest.raises(SftpackError, match="hubs are off"):
        model_location("Org/Name", "--model", environ=offline)
    snapshot = tmp_path / "hf" / "hub" / "models--Org--Name" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert model_location("Org/Name", "--model", environ=offline) == "Org/Name"    # cached: usable offline
    (tmp_path / "here").mkdir()
    assert model_location("here", "--model", environ=offline) == Path("here")
    base = tmp_path / "repo"
    (base / "models" / "m").mkdir(parents=True)
    assert model_location("models/m", "--model", bases=(base,)) == base / "models" / "m"
    with pytest.raises(SftpackError, match=r"models/typo: no such file or folder \(.*repo/models/typo nor "):
        model_location("models/typo", "--model", bases=(base,), environ=online)   # first part is a folder there


def test_an_unreadable_done_json_reruns_the_stage(tmp_path, capsys):
    from sftpack.pipeline.stages import DONE, Stage, run_stages

    ran = []
    stages = [Stage("model", lambda ctx: ran.append(1) or {})]
    run_stages(stages, tmp_path / "out")
    (tmp_path / "out" / "model" / DONE).write_text('{"key": "trunc')
    records = run_stages(stages, tmp_path / "out")
    assert len(ran) == 2 and not records["model"]["skipped"]
    assert "is not valid JSON" in capsys.readouterr().out
