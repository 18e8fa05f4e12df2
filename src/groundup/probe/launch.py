"""``groundup launch``: a script that runs a groundup stage under torchrun on N nodes of G processes.

    groundup launch --nodes 4 --gpus_per_node 8 --slurm --time 24:00:00 -- pretrain --config run.yaml

With ``--slurm`` it is an sbatch script: one torchrun per node (``srun``), c10d rendezvous on the job's
first node, and requeue on preemption: Slurm sends SIGUSR1 to the script ``grace_seconds`` before the time
limit (``--signal=B:USR1@...``); the script sends SIGTERM to the job step, which srun and torchrun forward to
every rank; the ranks finish their step, write a checkpoint and stop (:mod:`groundup.train.loop`); then the
script requeues the job, and the requeued job resumes (``--train.resume auto``, added to a training stage
that does not name a resume). Without srun and on one node (a test outside a cluster) the script runs
torchrun itself; without scontrol it takes the node list's first name and cannot requeue.

Without ``--slurm`` the script is the same torchrun line for any cluster: run it on every node with
``HEAD`` set to the address of one of them.

``--dry-run`` prints the script; ``--submit`` writes it and hands it to ``sbatch``; otherwise it is written.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from groundup import config as configlib

TRAINING_STAGES = ("pretrain", "finetune")
"""Stages that checkpoint and resume: a requeued job continues them with --train.resume auto."""
MARKER = "# Written by `groundup launch`"


@dataclass(kw_only=True)
class Config:
    """Write a script that runs a groundup stage under torchrun on N nodes (a Slurm batch script with
    requeue on preemption, with --slurm), print it (--dry-run) or submit it (--submit)."""

    command: list[str] = field(default_factory=list, metadata=configlib.positional(nargs="*", metavar="STAGE"))
    """The groundup stage and its flags, after `--` (`-- pretrain --config run.yaml`)."""
    nodes: int = 1
    """Nodes to run on."""
    gpus_per_node: int = 8
    """Processes per node (torchrun's --nproc_per_node): one per GPU."""
    gpus: bool = True
    """Ask Slurm for the GPUs (--gpus-per-node); false for CPU processes (gloo)."""
    slurm: bool = False
    """Write a Slurm batch script (rendezvous from SLURM's variables, requeue on preemption)."""
    dry_run: bool = False
    """Print the script and write nothing."""
    submit: bool = False
    """Write the script and submit it with sbatch (with --slurm)."""
    script: Path | None = None
    """Where to write the script (default: launch.sbatch with --slurm, else launch.sh)."""
    job_name: str | None = None
    """Slurm job name (default: groundup-<stage>)."""
    time: str | None = None
    """Slurm time limit (--time, e.g. 24:00:00; default: the partition's)."""
    partition: str | None = None
    """Slurm partition."""
    account: str | None = None
    """Slurm account."""
    cpus_per_task: int | None = None
    """CPUs for each node's torchrun and its ranks (Slurm's --cpus-per-task)."""
    sbatch_options: list[str] = field(default_factory=list)
    """More #SBATCH options, as given (e.g. --exclusive --mem=0)."""
    grace_seconds: int = 300
    """Seconds before the time limit at which the ranks are told to checkpoint and stop; torchrun waits this
    long for them before killing them."""
    port: int = 29500
    """Rendezvous port on the head node (the environment's GROUNDUP_RDZV_PORT overrides it)."""
    python: str | None = None
    """The Python that runs groundup on the nodes (default: this one, sys.executable)."""
    logs: Path = Path("logs")
    """Folder of the Slurm job's output file (created when the script is written)."""
    overwrite: bool = False
    """Replace an existing script that `groundup launch` did not write."""


def check(cfg: Config) -> None:
    problems = []
    if not cfg.command:
        problems.append("no stage given: put it after `--` (groundup launch --nodes 2 -- pretrain --config run.yaml)")
    elif cfg.command[0].startswith("-"):
        problems.append(f"the stage comes first after `--`, got {cfg.command[0]!r}")
    if cfg.nodes <= 0 or cfg.gpus_per_node <= 0:
        problems.append(f"nodes and gpus_per_node must be positive, got {cfg.nodes}, {cfg.gpus_per_node}")
    if cfg.dry_run and cfg.submit:
        problems.append("--dry_run and --submit exclude each other")
    if cfg.submit and not cfg.slurm:
        problems.append("--submit hands the script to sbatch: it needs --slurm")
    if cfg.grace_seconds <= 0 or not 0 < cfg.port < 65536:
        problems.append(f"grace_seconds must be positive and port in 1..65535, got {cfg.grace_seconds}, {cfg.port}")
    if problems:
        raise ValueError("invalid launch: " + "; ".join(problems))


def stage_command(command: list[str]) -> list[str]:
    """The stage's command line; a training stage that names no resume gets ``--train.resume auto`` (a
    requeued or restarted job continues from its newest checkpoint)."""
    names = [arg.split("=", 1)[0].replace("-", "_") for arg in command]
    if command[0] in TRAINING_STAGES and "__train.resume" not in names:
        return [*command, "--train.resume", "auto"]
    return list(command)


def _torchrun(cfg: Config, nnodes: str, rdzv_id: str) -> str:
    stage = " ".join(shlex.quote(a) for a in stage_command(cfg.command))
    return (f'"$PYTHON" -m torch.distributed.run --nnodes {nnodes} --nproc_per_node {cfg.gpus_per_node} \\\n'
            f'    --rdzv_backend c10d --rdzv_endpoint "$HEAD:$PORT" --rdzv_id {rdzv_id} \\\n'
            f"    -m groundup.cli {stage}")


def sbatch_header(cfg: Config) -> list[str]:
    options = [f"--job-name={cfg.job_name or 'groundup-' + cfg.command[0]}", f"--nodes={cfg.nodes}",
               "--ntasks-per-node=1"]
    if cfg.gpus:
        options.append(f"--gpus-per-node={cfg.gpus_per_node}")
    for name, value in (("cpus-per-task", cfg.cpus_per_task), ("time", cfg.time), ("partition", cfg.partition),
                        ("account", cfg.account)):
        if value is not None:
            options.append(f"--{name}={value}")
    options += ["--requeue", "--open-mode=append", f"--signal=B:USR1@{cfg.grace_seconds}",
                f"--output={Path(cfg.logs) / '%x-%j.out'}", *cfg.sbatch_options]
    return [f"#SBATCH {option}" for option in options]


SLURM_BODY = r"""set -uo pipefail

: "${SLURM_JOB_ID:?not running under Slurm (SLURM_JOB_ID is not set)}"
NNODES=${SLURM_NNODES:-1}
if command -v scontrol >/dev/null 2>&1; then
    HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
else  # no scontrol (outside a cluster): the node list's first name, as given
    HEAD=${SLURM_JOB_NODELIST%%,*}
fi
PORT=${GROUNDUP_RDZV_PORT:-__PORT__}
# torchrun forwards SIGTERM to its ranks and waits this long for their checkpoint before killing them
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=__GRACE__

if command -v srun >/dev/null 2>&1; then
    LAUNCHER=(srun --ntasks-per-node=1 --kill-on-bad-exit=1)  # one torchrun per node
elif [ "$NNODES" -eq 1 ]; then
    LAUNCHER=()  # one node without srun (outside a cluster): torchrun itself
else
    echo "groundup launch: srun not found: cannot start torchrun on $NNODES nodes" >&2
    exit 1
fi

REQUEUE=0
on_usr1() {  # Slurm's warning before the time limit (--signal=B:USR1@...)
    echo "groundup launch: SIGUSR1: the ranks checkpoint and stop, then the job is requeued" >&2
    REQUEUE=1
    kill -TERM "$CHILD" 2>/dev/null  # srun forwards it to torchrun on every node, torchrun to its ranks
}
on_term() {  # preemption or scancel: Slurm signals the job step itself; wait for its checkpoint
    echo "groundup launch: SIGTERM: waiting for the ranks to checkpoint and stop" >&2
}
trap on_usr1 USR1
trap on_term TERM

${LAUNCHER[@]+"${LAUNCHER[@]}"} __TORCHRUN__ &
CHILD=$!
wait "$CHILD"
STATUS=$?
while kill -0 "$CHILD" 2>/dev/null; do  # a trapped signal ends `wait` early: wait again
    wait "$CHILD"
    STATUS=$?
done
if [ "$REQUEUE" -eq 1 ]; then
    if command -v scontrol >/dev/null 2>&1; then
        scontrol requeue "$SLURM_JOB_ID"
    else
        echo "groundup launch: scontrol not found: job $SLURM_JOB_ID not requeued" >&2
    fi
    exit 0
fi
exit "$STATUS"
"""

PLAIN_BODY = r"""set -euo pipefail
# Run this script on each of the __NODES__ node(s), with HEAD the address of one of them (the rendezvous host).
: "${HEAD:?set HEAD to the address of one node, the rendezvous host}"
PORT=${GROUNDUP_RDZV_PORT:-__PORT__}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=__GRACE__

exec __TORCHRUN__
"""


def render(cfg: Config) -> str:
    """The script's text."""
    from groundup import __version__

    check(cfg)
    python = shlex.quote(cfg.python or sys.executable)
    head = ["#!/bin/bash", f"{MARKER} (groundup {__version__}):",
            "#   groundup launch " + " ".join(shlex.quote(a) for a in launch_argv(cfg))]
    if cfg.slurm:
        body = SLURM_BODY.replace("__TORCHRUN__", _torchrun(cfg, '"$NNODES"', '"$SLURM_JOB_ID"'))
        head += sbatch_header(cfg)
    else:
        body = PLAIN_BODY.replace("__TORCHRUN__", _torchrun(cfg, str(cfg.nodes), '"${RUN_ID:-groundup}"'))
        body = body.replace("__NODES__", str(cfg.nodes))
    body = body.replace("__PORT__", str(cfg.port)).replace("__GRACE__", str(cfg.grace_seconds))
    return "\n".join(head) + f"\n\nPYTHON={python}\n" + body


def launch_argv(cfg: Config) -> list[str]:
    """The command line that writes this script again (the settings that differ from the defaults)."""
    default = Config()
    argv = []
    for name in ("nodes", "gpus_per_node", "gpus", "slurm", "time", "partition", "account", "cpus_per_task",
                 "grace_seconds", "port", "job_name"):
        value = getattr(cfg, name)
        if value != getattr(default, name):
            argv += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    if cfg.sbatch_options:
        argv += ["--sbatch_options", json.dumps(cfg.sbatch_options)]
    return [*argv, "--", *cfg.command]


def is_launch_script(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return MARKER in f.read(400)
    except (OSError, UnicodeDecodeError):
        return False


def run(cfg: Config) -> Path:
    """Print, write or submit the script; returns its path (``-`` for a dry run)."""
    from groundup.artifacts import prepare_out

    text = render(cfg)
    if cfg.dry_run:
        print(text, end="")
        return Path("-")
    script = Path(cfg.script or ("launch.sbatch" if cfg.slurm else "launch.sh"))
    prepare_out(script, stage="launch", overwrite=cfg.overwrite, written_by=is_launch_script)
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text, encoding="utf-8")
    script.chmod(0o755)
    if cfg.slurm:
        Path(cfg.logs).mkdir(parents=True, exist_ok=True)
    if not cfg.submit:
        how = f"sbatch {script}" if cfg.slurm else f"HEAD=<first node> bash {script} (on every node)"
        print(f"wrote {script}; run it with: {how}")
        return script
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise FileNotFoundError(f"sbatch not found on PATH: {script} was written; submit it where Slurm is")
    done = subprocess.run([sbatch, str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed (exit {done.returncode}): {' '.join(done.stderr.split())}")
    print(done.stdout.strip())
    return script
