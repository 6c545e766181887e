"""Elastic restart: two torchrun agents ("nodes") with c10d rendezvous on localhost; a worker is killed mid-epoch,
the group restarts (``--max-restarts 1``), resumes from its last checkpoint (``--resume auto``) and ends with the
weights of an uninterrupted run. The command is the one docs/distributed.md gives for SLURM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sharded_checkpoint import assert_weights_close, copy_setup, write_recipe
from torchrun import REPO, free_port, run_two_processes

STEPS = 8  # 256 rows / 32 per global batch: 8 steps is one epoch; the kill lands after step 2 of it


def elastic_agents(recipe: Path, out: Path, port: int, logs: Path) -> list[subprocess.Popen]:
    """Two agents writing to log files (a pipe nobody reads fills up and blocks the workers)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # A store per rendezvous round: on the agents' shared store the restarted workers may read the dead generation's
    # gloo addresses (the agent whose worker died counts a restart, the others do not; see docs/distributed.md).
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc_per_node", "1",
        "--max-restarts", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", "elastic-test", "-m", "mmssl.cli", "train", str(recipe), f"train.steps={STEPS}",
        "train.batch_size=16", "-o", str(out), "--resume", "auto", "--no-eval",
    ]  # fmt: skip
    return [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=(logs / f"agent{i}.log").open("w"), stderr=subprocess.STDOUT)
        for i in range(2)
    ]


def workers_of(agent: int) -> list[int]:
    found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(agent)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


@pytest.mark.slow
def test_killed_worker_restarts_and_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    reference = tmp_path / "uninterrupted"
    code, output = run_two_processes(
        ["-m", "mmssl.cli", "train", str(recipe), f"train.steps={STEPS}", "train.batch_size=16", "-o", str(reference),
         "--no-eval"]
    )  # fmt: skip
    assert code == 0, output

    out = tmp_path / "elastic"
    copy_setup(reference, out)  # the same fitted processors; `--resume auto` starts it from step 0
    agents = elastic_agents(recipe, out, free_port(), tmp_path)
    killed = None
    deadline = time.time() + 400
    try:
        while time.time() < deadline and killed is None:
            if (out / "checkpoints" / "step_0000002").is_dir():
                victims = workers_of(agents[1].pid)
                if victims:
                    os.kill(victims[0], signal.SIGKILL)
                    killed = victims[0]
            time.sleep(0.05)
        for agent in agents:
            agent.wait(timeout=max(1, deadline - time.time()))
    finally:
        for agent in agents:
            if agent.poll() is None:
                for worker in workers_of(agent.pid):
                    os.kill(worker, signal.SIGKILL)
                agent.kill()
    logs = [(tmp_path / f"agent{i}.log").read_text() for i in range(2)]
    assert killed is not None, "no checkpoint appeared"
    assert [a.returncode for a in agents] == [0, 0], "\n".join(log[-4000:] for log in logs)
    assert any("resumed from" in log for log in logs), "\n".join(log[-4000:] for log in logs)
    assert_weights_close(out / "model.safetensors", reference / "model.safetensors")
