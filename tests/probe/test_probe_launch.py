"""`groundup launch`: the script's text, and the Slurm script run for real on this machine with SLURM's
variables set by hand: 2 local gloo ranks pretrain to completion, and SIGUSR1 (Slurm's warning before the
time limit) checkpoints, stops and requeues, after which the requeued script resumes and finishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from groundup import cli
from groundup.probe import launch

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_slurm_script(capsys):
    assert cli.main(["launch", "--nodes", "4", "--gpus_per_node", "8", "--slurm", "--time", "24:00:00",
                     "--partition", "gpu", "--sbatch_options", '["--exclusive"]', "--dry_run", "--",
                     "pretrain", "--config", "run.yaml", "--out", "runs/my run"]) == 0
    text = capsys.readouterr().out
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --time=24:00:00", "#SBATCH --partition=gpu", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --exclusive", "#SBATCH --job-name=groundup-pretrain"):
        assert line in text.splitlines(), line
    assert "--rdzv_endpoint \"$HEAD:$PORT\" --rdzv_id \"$SLURM_JOB_ID\"" in text
    assert "-m groundup.cli pretrain --config run.yaml --out 'runs/my run' --train.resume auto" in text
    assert "scontrol requeue" in text and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300" in text
    assert "groundup launch --nodes 4 --slurm true --time 24:00:00 --partition gpu" in text  # how it was made
    syntax = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_the_plain_script_and_bad_launches(tmp_path):
    cfg = launch.Config(nodes=2, gpus_per_node=4, command=["finetune", "sft", "--train.resume", "none"],
                        script=tmp_path / "run.sh")
    text = launch.render(cfg)
    assert "--nnodes 2 --nproc_per_node 4" in text and "#SBATCH" not in text
    commands = [line for line in text.splitlines() if not line.startswith("#")]
    assert sum(line.count("--train.resume") for line in commands) == 1  # the stage's own resume is kept
    assert subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True).returncode == 0
    assert launch.run(cfg) == tmp_path / "run.sh" and os.access(tmp_path / "run.sh", os.X_OK)
    assert launch.run(cfg) == tmp_path / "run.sh"  # its own script is replaced ...
    (tmp_path / "mine.sh").write_text("echo hello\n")
    with pytest.raises(FileExistsError, match="not an earlier launch"):  # ... anything else is not
        launch.run(launch.Config(command=["pretrain"], script=tmp_path / "mine.sh"))
    assert launch.stage_command(["evaluate", "--model", "m"]) == ["evaluate", "--model", "m"]
    assert launch.stage_command(["pretrain", "--train.resume=none"]) == ["pretrain", "--train.resume=none"]
    for bad, message in ((launch.Config(), "no stage given"), (launch.Config(command=["--out", "x"]), "comes first"),
                         (launch.Config(command=["pretrain"], nodes=0), "must be positive"),
                         (launch.Config(command=["pretrain"], submit=True), "needs --slurm"),
                         (launch.Config(command=["pretrain"], slurm=True, submit=True, dry_run=True), "exclude")):
        with pytest.raises(ValueError, match=message):
            launch.render(bad)


def fake_slurm_tools(folder: Path, *, srun: bool) -> Path:
    """scontrol (hostnames, requeue) and, if asked, srun, that log their calls: Slurm's tools replaced."""
    folder.mkdir()
    (folder / "scontrol").write_text('#!/bin/bash\necho "scontrol $*" >> "$SLURM_TOOLS_LOG"\n'
                                     'if [ "$1 $2" = "show hostnames" ]; then echo "${3%%,*}"; fi\n')
    if srun:  # one task on this one node: run the command itself
        (folder / "srun").write_text('#!/bin/bash\necho "srun $*" >> "$SLURM_TOOLS_LOG"\n'
                                     'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


def slurm_env(tmp_path: Path, tools: Path) -> dict:
    return {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
            # port 0: the rendezvous store takes a free port (torchrun --standalone's way), so tests running side
            # by side never meet at one port
            "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost", "GROUNDUP_RDZV_PORT": "0",
            "SLURM_TOOLS_LOG": str(tmp_path / "tools.log"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def tiny_pretrain(tokens: Path, out: Path, *train: str) -> list[str]:
    return ["pretrain", "--tokens", str(tokens), "--out", str(out), "--model.n_layer", "1", "--model.n_embd", "32",
            "--model.n_head", "4", "--model.block_size", "32", "--model.vocab_size", "320", "--batch_size", "4",
            "--seq_len", "32", "--device", "cpu", "--eval_windows", "2", "--final_eval_stride", "32", "--train.grad_accum", "2",
            "--train.log_every", "1", "--train.eval_every", "0", "--train.progress_bar", "false", *train]


def write_script(tmp_path: Path, command: list[str]) -> Path:
    return launch.run(launch.Config(nodes=1, gpus_per_node=2, gpus=False, slurm=True, python=sys.executable,
                                    script=tmp_path / "job.sbatch", logs=tmp_path / "logs", command=command))


@pytest.mark.slow
def test_the_slurm_script_trains_on_one_node_with_two_ranks(spine_tokens, tmp_path):
    out = tmp_path / "run"
    script = write_script(tmp_path, tiny_pretrain(spine_tokens, out, "--train.max_steps", "4"))
    env = slurm_env(tmp_path, fake_slurm_tools(tmp_path / "bin", srun=True))
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["result"]["steps"] == 4 and manifest["result"]["stopped_by"] == "max_steps"
    tools = (tmp_path / "tools.log").read_text()
    assert "scontrol show hostnames localhost" in tools and "srun --ntasks-per-node=1" in tools
    assert "requeue" not in tools


@pytest.mark.slow
def test_sigusr1_checkpoints_requeues_and_the_requeued_job_finishes(spine_tokens, tmp_path):
    if shutil.which("srun"):
        pytest.skip("a real srun is on PATH: this test runs the script where srun is absent")
    out = tmp_path / "run"
    # A budget of training time, so that the requeued job ends however far the first one got.
    script = write_script(tmp_path, tiny_pretrain(spine_tokens, out, "--train.max_steps", "1000000",
                                                  "--train.max_minutes", "0.25", "--train.checkpoint_every", "0"))
    env = slurm_env(tmp_path, fake_slurm_tools(tmp_path / "bin", srun=False))
    log = tmp_path / "job.log"
    with open(log, "w") as output:  # a file, not a pipe: nothing waits on a process that holds it open
        job = subprocess.Popen(["bash", str(script)], env=env, stdout=output, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert job.poll() is None, log.read_text()[-4000:]
        os.kill(job.pid, signal.SIGUSR1)  # what --signal=B:USR1@GRACE sends the batch shell
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    stderr = log.read_text()
    assert job.returncode == 0, stderr[-4000:]
    assert "SIGUSR1: the ranks checkpoint and stop" in stderr
    assert (tmp_path / "tools.log").read_text().splitlines()[-1] == "scontrol requeue 4242"
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert checkpoints and not (out / "manifest.json").exists()
    stopped = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert stopped["event"] == "stopped" and stopped["signal"] == "SIGTERM"
    # Slurm runs the requeued job's script again: it resumes from the checkpoint and finishes
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    result = json.loads((out / "manifest.json").read_text())["result"]
    assert result["stopped_by"] == "max_minutes" and result["steps"] > stopped["step"]
