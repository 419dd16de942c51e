"""Distributed launch on a CPU: DDP over gloo with 2 processes, and 2 "nodes" on localhost, for both frameworks.

    .venv/bin/python -m pytest -n 2 -q tests/test_distributed_cpu.py          # 4 launches (integration) + 2 unit

Every run goes through the one training core (sftpack.training.run_training) with the shipped full fine-tuning
configs on the tiny model, 2 steps, per-device batch 2, over the first 32 rows of the shipped GSM8K sample,
prepared by `sftpack prepare`'s own code. What makes it distributed is only what a user sets: `NPROC_PER_NODE=2`
(one node), or `NNODES=2`, `NODE_RANK=0|1`, `MASTER_ADDR=127.0.0.1`, one shared `MASTER_PORT` (two launches started at once, each with its
own output folder and caches, as two machines would be). The core and the adapters add the rest (a free
MASTER_PORT, LLaMA-Factory's FORCE_TORCHRUN=1 and torchrun on PATH).

Proof that a run was really distributed, not just that it exited 0 (each from the run's own files):
- the Trainer's `trainer_state.json` (both frameworks): after 2 steps of per-device batch 2 over 32 rows, `epoch` is
  steps x batch x world / rows = 0.25 with world size 2 (0.125 with one process): each rank read half the data;
- one `rng_state_<rank>.pth` per process in the checkpoint (HF saves one per process index): ranks 0 and 1 in a
  2-process run; in the 2-node run rank 0's in node 0's folder and rank 1's in node 1's (each rank ran under its
  own node's launcher);
- the framework's own log line `world size: 2` (LLaMA-Factory) / `world_size: 2` (Swift).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sftpack import frameworks as fw
from sftpack.training import TrainJob, run_training

ROWS, STEPS, BATCH = 32, 2, 2
CONFIGS = {"llamafactory": fw.LF_FULL_CONFIG, "swift": fw.SWIFT_FULL_CONFIG}
WORLD_SIZE = re.compile(r"(?<![a-z_])world[ _]size:? (\d+)")


@pytest.fixture(scope="session")
def small_workdir(build_once) -> Path:
    """A folder holding dataset_info/ with the first ROWS rows of the shipped GSM8K sample's train split, prepared
    by sftpack's own converter (`sftpack prepare`'s code)."""
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS
    from sftpack.samples import sample_dir

    def build(root: Path) -> None:
        lines = (sample_dir("gsm8k") / "train.jsonl").read_text(encoding="utf-8").splitlines(True)[:ROWS]
        source = root / "source" / "gsm8k-train.jsonl"
        source.parent.mkdir()
        source.write_text("".join(lines), encoding="utf-8")
        prepare(CONVERTERS["gsm8k"], str(source), root / "dataset_info", splits=("train",), progress=False)

    return build_once(f"distributed-work-{ROWS}", build)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def job(framework: str, model: Path, cwd: Path, root: Path, base_env: dict, launch: dict) -> TrainJob:
    overrides = {**fw.adapter(framework).tiny_cpu, "max_steps": STEPS, "per_device_train_batch_size": BATCH,
                 "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": STEPS}
    return TrainJob(framework=framework, config=CONFIGS[framework], overrides=overrides, model=model,
                    output_dir=root / "output", cwd=cwd, record_dir=root / "record", cache=root / "cache", gpus=0,
                    timeout_s=300, env=launch, base_env=base_env, interval_s=1.0)


def checkpoint(output_dir: Path) -> Path:
    return output_dir / f"checkpoint-{STEPS}"


def world_size_from_epoch(output_dir: Path) -> float:
    """World size implied by the Trainer's own epoch counter: epoch x rows / (steps x per-device batch)."""
    state = json.loads((checkpoint(output_dir) / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == STEPS and state["train_batch_size"] == BATCH
    return state["epoch"] * ROWS / (STEPS * BATCH)


def ranks_saved(output_dir: Path) -> set[int]:
    return {int(p.stem.split("_")[-1]) for p in checkpoint(output_dir).glob("rng_state_*.pth")}


def stdout(root: Path) -> str:
    return (root / "record" / "stdout.log").read_text(encoding="utf-8", errors="replace")


def assert_ok(result, root: Path) -> None:
    assert result.status == "ok", f"{result.status}: {result.status_detail}\n{result.log_tail}"
    assert (root / "record" / "result.json").is_file()


@pytest.mark.integration
@pytest.mark.parametrize("framework", list(CONFIGS))
def test_ddp_two_processes_on_gloo(framework, tiny_model, small_workdir, env, tmp_path):
    """NPROC_PER_NODE=2 on a CPU: one launcher, two ranks (gloo), through the training core."""
    root = tmp_path / framework
    result = run_training(job(framework, tiny_model, small_workdir, root, env, {"NPROC_PER_NODE": "2"}))
    assert_ok(result, root)
    assert result.env_overrides["NPROC_PER_NODE"] == "2" and int(result.env_overrides["MASTER_PORT"]) > 0
    assert result.throughput.steps == STEPS
    assert result.throughput.samples_seen == STEPS * BATCH * 2, "samples seen count both ranks' micro-batches"
    output = root / "output"
    assert world_size_from_epoch(output) == pytest.approx(2.0), "each rank must read half the rows"
    assert ranks_saved(output) == {0, 1}
    assert set(WORLD_SIZE.findall(stdout(root))) == {"2"}
    assert result.final_loss is not None and result.final_loss > 0
    print(f"{framework} DDP x2: wall {result.wall_s:.1f} s, CPU {result.cpu_user_s + result.cpu_system_s:.1f} s, "
          f"peak RSS {result.memory.peak_rss_largest_process_mib:.0f} MiB")


@pytest.mark.integration
@pytest.mark.parametrize("framework", list(CONFIGS))
def test_two_nodes_on_localhost(framework, tiny_model, small_workdir, env, tmp_path):
    """NNODES=2, NODE_RANK 0 and 1, MASTER_ADDR=127.0.0.1, one MASTER_PORT: two launches at once, one rank each."""
    port = str(free_port())
    roots = [tmp_path / f"{framework}-node{rank}" for rank in (0, 1)]
    jobs = [job(framework, tiny_model, small_workdir, roots[rank], env,
                {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
            for rank in (0, 1)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run_training, jobs))
    for rank, (result, root) in enumerate(zip(results, roots)):
        assert_ok(result, root)
        assert result.env_overrides["NPROC_PER_NODE"] == "1" and result.env_overrides["NODE_RANK"] == str(rank)
        assert result.env_overrides["MASTER_PORT"] == port
    assert results[0].throughput.samples_seen == STEPS * BATCH * 2, "one rank per node, two nodes"   # rank 0 logs
    node0, node1 = (root / "output" for root in roots)
    assert world_size_from_epoch(node0) == pytest.approx(2.0), "each node's rank must read half the rows"
    assert ranks_saved(node0) == {0} and ranks_saved(node1) == {1}, "rank 1 must run under node 1's launcher"
    assert set(WORLD_SIZE.findall(stdout(roots[0]))) == {"2"}
    cpu = sum(r.cpu_user_s + r.cpu_system_s for r in results)
    print(f"{framework} 2 nodes: wall {max(r.wall_s for r in results):.1f} s, CPU {cpu:.1f} s")


# -- the launch environment (no framework process: cheap) ---------------------------------------------------------
def test_the_core_completes_a_cpu_launch_and_a_nodes_port_wins(tmp_path):
    from sftpack.training import environment

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    base = {"PATH": "/usr/bin"}
    lf = TrainJob(framework="llamafactory", config=fw.LF_FULL_CONFIG, overrides={}, model=model, cwd=tmp_path,
                  output_dir=tmp_path / "o", record_dir=tmp_path / "r", cache=tmp_path / "c", gpus=0,
                  env={"NPROC_PER_NODE": "2"}, base_env=base)
    _, extra = environment(lf)
    assert extra["NPROC_PER_NODE"] == "2" and int(extra["MASTER_PORT"]) > 0 and extra["FORCE_TORCHRUN"] == "1"
    assert extra["CUDA_VISIBLE_DEVICES"] == ""
    assert extra["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)   # LF starts `torchrun` by name
    lf.env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}
    _, extra = environment(lf)
    assert (extra["NPROC_PER_NODE"], extra["MASTER_PORT"], extra["NODE_RANK"]) == ("1", "29555", "1")
    swift = TrainJob(framework="swift", config=fw.SWIFT_FULL_CONFIG, overrides={}, model=model, cwd=tmp_path,
                     output_dir=tmp_path / "o", record_dir=tmp_path / "r", cache=tmp_path / "c", gpus=0,
                     env={"NPROC_PER_NODE": "2"}, base_env=base)
    _, extra = environment(swift)
    assert extra["NPROC_PER_NODE"] == "2" and "FORCE_TORCHRUN" not in extra and "PATH" not in extra
    lf.env = {}
    _, extra = environment(lf)
    assert not set(extra) & {"NPROC_PER_NODE", "MASTER_PORT", "FORCE_TORCHRUN"}, "one process: no torchrun"
    assert fw.launch_shape(2, {}) == (2, 1) and fw.launch_shape(0, {"NNODES": "2"}) == (1, 2)
    with pytest.raises(Exception, match="NPROC_PER_NODE='two'"):
        fw.launch_shape(0, {"NPROC_PER_NODE": "two"})


def test_llamafactory_arguments_survive_its_torchrun_relaunch():
    """LLaMA-Factory's launcher re-splits its arguments on whitespace: `fsdp=full_shard auto_wrap` became two
    arguments (`Some keys are not used by the HfArgumentParser: ['auto_wrap']`, the distributed suite's lf_fsdp)."""
    cmd = fw.lf_train_cmd(fw.LF_FULL_CONFIG, {"fsdp": "full_shard auto_wrap", "lora_target": ["q_proj", "v_proj"]})
    assert cmd[-2:] == ["fsdp=[full_shard,auto_wrap]", "lora_target=[q_proj,v_proj]"]
    assert all(len(arg.split()) == 1 for arg in cmd[2:])
