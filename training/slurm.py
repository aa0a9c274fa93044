"""Slurm, as its clusters run jobs: the rank layout of an `srun` task, the job's hosts, and the requeue that follows
the warning signal Slurm sends before a time limit or a preemption.

    adopt_srun_env(os.environ)        # an srun task: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set
    hostnames("gpu[001-004,017],cpu7")  # ['gpu001', ..., 'gpu017', 'cpu7'], as `scontrol show hostnames`
    said = requeue(os.environ)        # `scontrol requeue $SLURM_JOB_ID`: what happened, in one line

Only `srun` tasks (SLURM_STEP_ID set) are ranks: a batch script's own shell has SLURM_PROCID 0 and SLURM_NTASKS N too,
but it is one process, and `python train.py` there would wait for N - 1 ranks that never start.
"""
from __future__ import annotations

import re
import subprocess
from typing import Mapping, MutableMapping, Optional

from util.errors import UserError

PORT_BASE, PORT_SPAN = 20000, 30000  # the rendezvous port: 20000-49999, from the job and step ids
_RANGE = re.compile(r"(\d+)(?:-(\d+))?$")


class HostlistError(UserError, ValueError):
    """A node list that Slurm itself would refuse."""


def hostnames(nodelist: str) -> list[str]:
    """A Slurm node list expanded the way `scontrol show hostnames` does: comma-separated names, each a prefix
    followed by bracketed ranges (`n[01-03,7]`: zero padding from the first number; `a[1-2]b[3-4]`: every
    combination, the first bracket outermost); duplicates kept, order kept. Text after the last bracket is refused,
    as Slurm refuses it."""
    hosts = []
    for term in _top_level_terms(nodelist):
        names = [""]
        rest = term
        while rest:
            open_at = rest.find("[")
            if open_at < 0:
                if term != rest:  # `node[1-2].cluster`: Slurm 22.05 says "Invalid hostlist"
                    raise HostlistError(f"invalid Slurm node list {nodelist!r}: text after ']' in {term!r}")
                names = [n + rest for n in names]
                break
            close_at = rest.find("]", open_at)
            if close_at < 0 or "[" in rest[open_at + 1:close_at]:
                raise HostlistError(f"invalid Slurm node list {nodelist!r}: unbalanced '[' in {term!r}")
            prefix, numbers = rest[:open_at], _expand_ranges(rest[open_at + 1:close_at], nodelist)
            names = [n + prefix + x for n in names for x in numbers]
            rest = rest[close_at + 1:]
        hosts.extend(names)
    return hosts


def _top_level_terms(nodelist: str) -> list[str]:
    """The comma-separated names of a node list, commas inside brackets kept with their name; empty ones dropped."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"invalid Slurm node list {nodelist!r}: ']' without '['")
        elif ch == "," and depth == 0:
            terms.append(nodelist[start:i])
            start = i + 1
    terms.append(nodelist[start:])
    return [t.strip() for t in terms if t.strip()]


def _expand_ranges(spec: str, nodelist: str) -> list[str]:
    """`01-03,7` → ['01', '02', '03', '7']: each number as wide as the range's first one."""
    out = []
    for part in spec.split(","):
        match = _RANGE.match(part)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise HostlistError(f"invalid Slurm node list {nodelist!r}: range {part!r}")
        lo, hi = match.group(1), match.group(2) or match.group(1)
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return out


def rendezvous_port(job_id: int, step_id: int) -> int:
    """The port rank 0 listens on: the same on every task of a step, from its job and step ids (two steps of one
    job running at once get different ports)."""
    return PORT_BASE + (job_id * 16 + step_id) % PORT_SPAN


def in_srun_step(env: Mapping[str, str]) -> bool:
    return "SLURM_STEP_ID" in env and "SLURM_PROCID" in env


def srun_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables of an `srun` task (`in_srun_step(env)`): RANK from SLURM_PROCID, WORLD_SIZE
    from the step's task count, LOCAL_RANK from SLURM_LOCALID, the node from SLURM_NODEID, MASTER_ADDR the step's
    first host (tasks are laid out block-wise: rank 0 runs there), MASTER_PORT from the job and step ids."""
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    try:
        first = hostnames(nodes)[0]
    except (HostlistError, IndexError) as err:
        raise HostlistError(f"srun task: cannot tell rank 0's host from SLURM_STEP_NODELIST={nodes!r} ({err}); set "
                            f"MASTER_ADDR") from None
    world = env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"]
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": world, "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "NODE_RANK": env.get("SLURM_NODEID", "0"), "MASTER_ADDR": first,
            "MASTER_PORT": str(rendezvous_port(int(env.get("SLURM_JOB_ID", "0")), int(env["SLURM_STEP_ID"])))}


def adopt_srun_env(env: MutableMapping[str, str]) -> bool:
    """In an `srun` task that no launcher of its own started (torchrun and DeepSpeed's set RANK, and win): sets the
    torch.distributed variables from Slurm's; returns whether it did."""
    if "RANK" in env or not in_srun_step(env):
        return False
    env.update(srun_env(env))
    return True


def describe_step(env: Mapping[str, str]) -> str:
    """`srun (Slurm job 7, step 0, restart 1)`: the start line's name of the launcher."""
    restarts = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    return (f"srun (Slurm job {env.get('SLURM_JOB_ID', '?')}, step {env.get('SLURM_STEP_ID', '?')}"
            + (f", restart {restarts}" if restarts else "") + ")")


def lone_batch_shell(env: Mapping[str, str]) -> Optional[str]:
    """A warning when train.py runs, as one process, in the batch shell of a job that has several tasks (it was not
    started with srun); None otherwise."""
    tasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if in_srun_step(env) or "SLURM_JOB_ID" not in env or tasks <= 1 or env.get("WORLD_SIZE", "1") != "1":
        return None
    return (f"train.py runs as one process in the batch shell of Slurm job {env['SLURM_JOB_ID']}, which has {tasks} "
            f"tasks: start it with `srun python train.py ...` (tools/slurm/train.sbatch) to train on all of them")


def requeue(env: Mapping[str, str], timeout_s: float = 60.0) -> str:
    """Asks Slurm to requeue this job (`scontrol requeue`): it goes back to the queue and its batch script starts
    again, with `--resume auto`, once it is scheduled. Returns what happened, in words, for the log."""
    job = env.get("SLURM_JOB_ID")
    if not job:
        return "not a Slurm job, so nothing requeues it: start it again with --resume auto"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"Slurm job {job} not requeued (scontrol: {err}): submit it again; it resumes with --resume auto"
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split())[:200] or f"exit code {done.returncode}"
        why = " (the job was submitted with --no-requeue, or the cluster sets JobRequeue=0)" if "disabled" in said else ""
        return (f"Slurm job {job} not requeued: scontrol requeue said: {said}{why}; submit it again: it resumes from "
                f"this checkpoint with --resume auto")
    return f"Slurm job {job} requeued: it continues from this checkpoint when it starts again (--resume auto)"
