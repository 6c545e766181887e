"""Fault injection: a training run stopped by SIGTERM, killed with SIGKILL (also in the middle of a checkpoint write),
given a poisoned checkpoint or a full disk loses at most the steps since its last checkpoint, says what happened in one
message, and resumed ends bit-identical to a run that was never disturbed.

Every run is a real ``mmssl train`` process (``tests/fault_scripts/train_with_fault.py`` injects the faults that
need to strike inside the process). ``FAULTS`` collects one row per injected fault; ``pytest -s`` prints the table.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mmssl.train import checkpoint as ckpt
from mmssl.train import integrity
from mmssl.train.preemption import STOPPED_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "tests" / "recipes" / "tiny_image_faults.yaml"
FAULT_SCRIPT = REPO / "tests" / "fault_scripts" / "train_with_fault.py"
STEPS = 40  # the recipe's train.steps; checkpoints every 10
FAULTS: list[dict[str, Any]] = []


def env(fault: str | None = None) -> dict[str, str]:
    extra = {"MMSSL_TEST_FAULT": fault} if fault else {}
    base = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "plugins"), base.get("PYTHONPATH")) if p)
    base.pop("MMSSL_DEBUG", None)
    return base


def command(out: Path, *args: str, fault: str | None = None) -> list[str]:
    entry = [str(FAULT_SCRIPT)] if fault else ["-m", "mmssl.cli"]
    return [sys.executable, *entry, "train", str(RECIPE), "--output", str(out), "--no-eval", *args]


def run(out: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(out, *args, fault=fault), cwd=REPO, env=env(fault), capture_output=True, text=True, timeout=300
    )


def launch(out: Path, *args: str) -> subprocess.Popen[str]:
    """Start a run in its own process group (a scheduler signals the whole group: main process and data worker)."""
    return subprocess.Popen(
        command(out, *args), cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for_step(proc: subprocess.Popen[str], out: Path, step: int, timeout: float = 120) -> None:
    """Wait until the run of ``proc`` logged ``step`` (lines an earlier run left behind do not count)."""
    started, end = time.time_ns(), time.monotonic() + timeout

    def reached() -> bool:
        path = out / "metrics.jsonl"
        return path.is_file() and path.stat().st_mtime_ns >= started and max(logged_steps(out), default=0) >= step

    while not reached() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()}"


def tensors_equal(x: Path, y: Path) -> list[str]:
    """Names of the tensors that differ (or exist in only one file)."""
    a, b = load_file(str(x)), load_file(str(y))
    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]


def assert_same_as_reference(reference: Path, out: Path) -> None:
    assert tensors_equal(reference / "model.safetensors", out / "model.safetensors") == []
    last = Path("checkpoints") / ckpt.checkpoint_name(STEPS)
    state_a = torch.load(reference / last / "state.pt", weights_only=True)
    state_b = torch.load(out / last / "state.pt", weights_only=True)
    for index, entry in state_a["optimizer"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, state_b["optimizer"]["state"][index][key]), (index, key)
    assert sorted(set(logged_steps(out))) == list(range(1, STEPS + 1))


def checkpoint_step(out: Path) -> int:
    found = ckpt.latest_checkpoint(out / "checkpoints")
    return int(found.name.removeprefix("step_")) if found else 0


def record(fault: str, injected: int, survived: int, lost: list[int], message: str) -> None:
    FAULTS.append({"fault": fault, "injected": injected, "survived": survived, "lost": lost, "message": message})


@pytest.fixture(scope="module", autouse=True)
def print_table() -> Any:
    yield
    if FAULTS:
        print("\n| fault | times injected | survived | data lost (steps) | message shown |")
        print("| --- | --- | --- | --- | --- |")
        for row in FAULTS:
            print(f"| {row['fault']} | {row['injected']} | {row['survived']} | {row['lost']} | {row['message']} |")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The undisturbed run."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    proc = run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def killed_in_write(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Killed with SIGKILL half-way through writing state.pt of the step-30 checkpoint."""
    out = tmp_path_factory.mktemp("faults") / "killed"
    proc = run(out, fault="kill_in_checkpoint:30")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_stop_signal_checkpoints_the_current_step_and_resume_is_bit_identical(
    sig: signal.Signals, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = launch(out)
    wait_for_step(proc, out, 13)  # between two checkpoints (10 and 20)
    os.killpg(proc.pid, sig)  # the whole group, as SLURM and a terminal's Ctrl-C do
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == STOPPED_EXIT_CODE, stderr[-3000:]
    stopped = max(logged_steps(out))
    assert stopped < STEPS
    assert checkpoint_step(out) == stopped  # nothing lost: the checkpoint is of the last step taken
    message = next(line for line in stderr.splitlines() if line.startswith(f"stopped by {sig.name}"))
    assert f"at step {stopped}; continue with: mmssl train" in message and message.endswith("--resume")
    assert "Traceback" not in stderr
    integrity.verify(out / "checkpoints" / ckpt.checkpoint_name(stopped))
    record(f"{sig.name} mid-run (process group)", 1, 1, [stopped - checkpoint_step(out)], message)

    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / ckpt.checkpoint_name(stopped)} at step {stopped}" in resumed.stdout
    assert_same_as_reference(reference, out)


def test_sigkill_during_a_checkpoint_write_then_resume_is_bit_identical(
    reference: Path, killed_in_write: Path, tmp_path: Path
) -> None:
    out = shutil.copytree(killed_in_write, tmp_path / "run")
    root = out / "checkpoints"
    staging = root / ".step_0000030.tmp"
    assert (staging / "model.safetensors").is_file() and (staging / "state.pt").is_file()  # half written
    assert not (staging / "manifest.json").exists() and not (root / "step_0000030").exists()
    assert (root / "latest").read_text().strip() == "step_0000020"
    integrity.verify(root / "step_0000020")
    assert max(logged_steps(out)) == 30

    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 20" in resumed.stdout
    assert_same_as_reference(reference, out)
    assert not staging.exists()
    record("SIGKILL while writing a checkpoint (half of state.pt on disk)", 1, 1, [10], "(none: killed) / resumed")


class Payload:
    """Unpickling this creates the file it names: a loader that runs code would leave it behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_poisoned_checkpoint_is_refused_and_resume_falls_back(
    reference: Path, killed_in_write: Path, tmp_path: Path
) -> None:
    out = shutil.copytree(killed_in_write, tmp_path / "run")
    latest = out / "checkpoints" / "step_0000020"
    marker = tmp_path / "payload_ran"
    state = torch.load(latest / "state.pt", weights_only=True)
    torch.save({**state, "scheduler": Payload(marker)}, latest / "state.pt")
    integrity.write_manifest(latest)  # the poisoner also rewrote the manifest: the loader must still refuse
    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not marker.exists()
    warning = next(line for line in resumed.stdout.splitlines() if line.startswith("warning:"))
    assert f"checkpoint file {latest / 'state.pt'} is corrupt" in warning
    assert "pickled objects other than tensors" in warning
    assert f"falling back to the previous complete checkpoint {out / 'checkpoints' / 'step_0000010'}" in warning
    assert "at step 10" in resumed.stdout
    assert_same_as_reference(reference, out)
    record("poisoned state.pt in the latest checkpoint (manifest rewritten too)", 1, 1, [20 - 10], warning)


def test_truncated_checkpoint_is_refused_by_its_manifest(killed_in_write: Path, tmp_path: Path) -> None:
    out = shutil.copytree(killed_in_write, tmp_path / "run")
    latest = out / "checkpoints" / "step_0000020"
    with (latest / "model.safetensors").open("r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(integrity.CorruptCheckpointError, match="1000 bytes where .* were written") as err:
        integrity.verify(latest)
    assert err.value.file == latest / "model.safetensors"
    data = bytearray((latest / "rng_rank0.pt").read_bytes())
    shutil.copy(out / "checkpoints" / "step_0000010" / "model.safetensors", latest / "model.safetensors")
    with pytest.raises(integrity.CorruptCheckpointError, match="model.safetensors is corrupt"):
        integrity.verify(latest)
    integrity.write_manifest(latest)
    data[-1] ^= 1  # one flipped bit, same size
    (latest / "rng_rank0.pt").write_bytes(bytes(data))
    with pytest.raises(integrity.CorruptCheckpointError, match="rng_rank0.pt is corrupt: .*SHA-256 mismatch"):
        integrity.verify(latest)
    integrity.verify(out / "checkpoints" / "step_0000010")


def test_resume_candidates(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        (root / ckpt.checkpoint_name(step)).mkdir(parents=True)
    ckpt.atomic_write_text(root / "latest", "step_0000020")
    assert [p.name for p in ckpt.resume_candidates(root)] == ["step_0000020", "step_0000030", "step_0000010"]
    assert ckpt.resume_candidates(root, 10) == [root / "step_0000010"]
    with pytest.raises(FileNotFoundError, match=r"--resume-step 15: .*\(steps in .*: 10, 20, 30\)"):
        ckpt.resume_candidates(root, 15)


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_previous_one(tmp_path: Path) -> None:
    """torch.save's zip writer on a full disk (the message of issue 9), without needing a small disk."""
    from accelerate import Accelerator

    from mmssl.train.trainer import save_checkpoint

    accelerator = Accelerator(cpu=True)
    module = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.ones(2, 64)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    root = tmp_path / "checkpoints"
    save_checkpoint(accelerator, root, 1, module, optimizer, scheduler, keep=2)
    before = {p.name: p.read_bytes() for p in (root / "step_0000001").iterdir()}

    real_save = torch.save

    def full_disk(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 742528 vs 742480")

    torch.save = full_disk
    try:
        with pytest.raises(integrity.CheckpointWriteError) as err:
            save_checkpoint(accelerator, root, 2, module, optimizer, scheduler, keep=2)
    finally:
        torch.save = real_save
    message = str(err.value)
    # The previous checkpoint's size on disk, which is more than the tensors alone (weights 64*64+64 floats, AdamW
    # moments twice that, the step counter): file headers, RNG state, manifest.
    needed = sum(len(data) for data in before.values())
    assert needed > 4 * (64 * 64 + 64) * 3 + 4
    assert message.startswith(f"no space left on device while writing checkpoint step_0000002 in {root}")
    assert f"it needs about {needed / 1024:.1f} KiB" in message
    assert f"The previous checkpoint {root / 'step_0000001'} is intact." in message
    assert "--resume" in message
    assert not ckpt.staging_dir(root, 2).exists() and not (root / "step_0000002").exists()
    assert {p.name: p.read_bytes() for p in (root / "step_0000001").iterdir()} == before
    assert (root / "latest").read_text().strip() == "step_0000001"


def _folder_bytes(folder: Path, page: int = 4096) -> int:
    return sum(-(-p.stat().st_size // page) * page for p in folder.rglob("*") if p.is_file())


def test_a_real_full_disk_keeps_the_previous_checkpoint(reference: Path, tmp_path: Path) -> None:
    """A tmpfs too small for two checkpoints: the second write fails, the first stays, a resume elsewhere is exact."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    one = _folder_bytes(reference / "checkpoints" / ckpt.checkpoint_name(STEPS))
    size = 160 * 1024 + one + one // 2  # run files (processors, metrics, tb) + one checkpoint + half of the next
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "run"
        proc = run(out)
        assert proc.returncode == 1, proc.stderr[-3000:]
        root = out / "checkpoints"
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        message = lines[0]
        assert f"error: no space left on device while writing checkpoint step_0000020 in {root}" in message
        assert "it needs about" in message and "free there" in message
        assert f"The previous checkpoint {root / 'step_0000010'} is intact." in message
        assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000010"]  # no half-written folder left
        integrity.verify(root / "step_0000010")
        lost = max(logged_steps(out)) - checkpoint_step(out)
        moved = shutil.copytree(out, tmp_path / "bigger_disk")
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    resumed = run(moved, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as_reference(reference, moved)
    record("disk full (tmpfs) while writing a checkpoint", 1, 1, [lost], message)


@pytest.mark.slow
def test_random_sigkills_then_resume_are_bit_identical(reference: Path, tmp_path: Path) -> None:
    """SIGKILL at random steps of a run that checkpoints every 2 steps: every other kill strikes at a random moment
    (the whole process group), the others half-way through writing a random checkpoint (the main process only)."""
    rng = random.Random(int(os.environ.get("MMSSL_FAULT_SEED", "0")))
    out = tmp_path / "run"
    kills, lost, in_write = 6, [], 0
    for attempt in range(kills):
        start = checkpoint_step(out)
        resume = ["--resume"] if start else []
        if attempt % 2:
            target = min(start + 2 * rng.randint(1, 3), STEPS - 2)
            proc = run(out, "train.checkpoint_every=2", *resume, fault=f"kill_in_checkpoint:{target}")
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        else:
            target = min(start + rng.randint(3, 7), STEPS - 2)  # past one checkpoint: there is one to resume
            proc = launch(out, "train.checkpoint_every=2", *resume)
            wait_for_step(proc, out, target)
            time.sleep(rng.uniform(0.0, 0.05))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
        in_write += any((out / "checkpoints").glob(".step_*.tmp"))
        lost.append(max(logged_steps(out)) - checkpoint_step(out))
        assert max(logged_steps(out)) < STEPS, f"kill {attempt} came after the run ended; make the run longer"
    resumed = run(out, "train.checkpoint_every=2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as_reference(reference, out)
    record(f"SIGKILL at random steps ({in_write} inside a checkpoint write)", kills, kills, lost, "(none: killed)")


@pytest.mark.slow
def test_sigterm_to_one_of_two_torchrun_processes(tmp_path: Path) -> None:
    """Only rank 1 gets SIGTERM: both processes agree on the step, checkpoint it, and a resume is exact."""
    import psutil
    from torchrun import free_port

    def torchrun(out: Path, *args: str) -> list[str]:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        return [*launcher, "-m", "mmssl.cli", "train", str(RECIPE), "--output", str(out), "--no-eval", *args]

    two = ("train.num_workers=0",)
    ref = tmp_path / "reference"
    done = subprocess.run(torchrun(ref, *two), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "run"
    proc = subprocess.Popen(torchrun(out, *two), cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(proc, out, 13)
    rank1 = next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    stopped = max(logged_steps(out))
    assert stopped < STEPS and checkpoint_step(out) == stopped, stderr.decode()[-3000:]
    folder = out / "checkpoints" / ckpt.checkpoint_name(stopped)
    assert sorted(p.name for p in folder.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    integrity.verify(folder)
    message = next(line for line in stderr.decode().splitlines() if "stopped by" in line and "continue" in line)
    assert f"stopped by SIGTERM at step {stopped}" in message  # rank 0 names the signal that rank 1 received
    record("SIGTERM to rank 1 of 2 (torchrun)", 1, 1, [0], message.strip())

    resumed = subprocess.run(torchrun(out, *two, "--resume"), cwd=REPO, env=env(), capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert tensors_equal(ref / "model.safetensors", out / "model.safetensors") == []
