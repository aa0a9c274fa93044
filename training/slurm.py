"""Slurm, as its clusters run jobs: the rank layout of an `srun` task, the job's hosts, and the requeue that follows
the warning signal Slurm sends before a time limit or a preemption.

    adopt_srun_env(os.environ)        # an srun task: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set
    first_host("gpu[001-004,017],cpu7"), host_count(...)   # 'gpu001', 6: from the ranges, no host listed
    said = requeue(os.environ)        # `scontrol requeue $SLURM_JOB_ID`: what happened, in one line

Only `srun` tasks (SLURM_STEP_ID set) are ranks: a batch script's own shell has SLURM_PROCID 0 and SLURM_NTASKS N too,
but it is one process, and `python train.py` there would wait for N - 1 ranks that never start. A variable that Slurm
would not set (SLURM_PROCID outside the step's tasks, a count or id that is no number) is a SlurmError naming it.
"""
from __future__ import annotations

import re
import subprocess
from typing import Mapping, MutableMapping, Optional

from util.errors import UserError

PORT_BASE, PORT_SPAN = 20000, 30000  # the rendezvous port: 20000-49999, from the job and step ids
_RANGE = re.compile(r"(\d{1,18})(?:-(\d{1,18}))?$")  # 18 digits: beyond, Slurm's unsigned long overflows


class SlurmError(UserError, ValueError):
    """A Slurm variable (a node list, a rank, a task count, an id) that Slurm itself would not set or would refuse."""


# A node list parsed: its terms, each a list of (text, ranges) pieces: the text, then one name part per range number
# (a piece without ranges is text alone). Ranges are (first, last, width): counted and walked, never listed, so a
# list of 10^12 hosts costs what its text costs.
Piece = tuple[str, list[tuple[int, int, int]]]


def first_host(nodelist: str) -> str:
    """The first name of `nodelist` (rank 0's host), the whole list checked but not expanded; a SlurmError for a
    list that Slurm would refuse or that names no host."""
    terms = parse_nodelist(nodelist)
    if not terms:
        raise SlurmError(f"invalid Slurm node list {nodelist!r}: no host in it")
    return "".join(text + (str(ranges[0][0]).zfill(ranges[0][2]) if ranges else "") for text, ranges in terms[0])


def host_count(nodelist: str) -> int:
    """How many names `nodelist` expands to, counted from its ranges (no name is made)."""
    count = 0
    for term in parse_nodelist(nodelist):
        product = 1
        for _, ranges in term:
            product *= sum(last - first + 1 for first, last, _ in ranges) if ranges else 1
        count += product
    return count


def parse_nodelist(nodelist: str) -> list[list[Piece]]:
    """The terms of `nodelist` (see Piece), as `scontrol show hostnames` reads them: comma-separated names, each a
    prefix followed by bracketed ranges (`n[01-03,7]`: zero padding from the first number; `a[1-2]b[3-4]`: every
    combination, the first bracket outermost). Each range is checked as Slurm checks it, and text after the last
    bracket refused, as Slurm refuses it: a SlurmError naming the list."""
    terms = []
    for term in _top_level_terms(nodelist):
        pieces, rest = [], term
        while rest:
            open_at = rest.find("[")
            if open_at < 0:
                if term != rest:  # `node[1-2].cluster`: Slurm 22.05 says "Invalid hostlist"
                    raise SlurmError(f"invalid Slurm node list {nodelist!r}: text after ']' in {term!r}")
                pieces.append((rest, []))
                break
            close_at = rest.find("]", open_at)
            if close_at < 0 or "[" in rest[open_at + 1:close_at]:
                raise SlurmError(f"invalid Slurm node list {nodelist!r}: unbalanced '[' in {term!r}")
            pieces.append((rest[:open_at], _ranges(rest[open_at + 1:close_at], nodelist)))
            rest = rest[close_at + 1:]
        terms.append(pieces)
    return terms


def _top_level_terms(nodelist: str) -> list[str]:
    """The comma-separated names of a node list, commas inside brackets kept with their name; empty ones dropped."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SlurmError(f"invalid Slurm node list {nodelist!r}: ']' without '['")
        elif ch == "," and depth == 0:
            terms.append(nodelist[start:i])
            start = i + 1
    terms.append(nodelist[start:])
    return [t.strip() for t in terms if t.strip()]


def _ranges(spec: str, nodelist: str) -> list[tuple[int, int, int]]:
    """`01-03,7` → [(1, 3, 2), (7, 7, 1)]: each number as wide as its range's first one."""
    out = []
    for part in spec.split(","):
        match = _RANGE.match(part)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise SlurmError(f"invalid Slurm node list {nodelist!r}: range {part!r}")
        lo, hi = match.group(1), match.group(2) or match.group(1)
        out.append((int(lo), int(hi), len(lo)))
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
    first host (tasks are laid out block-wise: rank 0 runs there), MASTER_PORT from the job and step ids. A variable
    Slurm would not set (a rank outside the step's tasks, a count or id that is not a number) is a SlurmError naming
    it: such a task would wait for ranks that never come."""
    nodes_key = next((k for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if env.get(k)),
                     "SLURM_STEP_NODELIST")
    nodes = env.get(nodes_key, "")
    try:
        first = first_host(nodes)
    except SlurmError as err:
        raise SlurmError(f"srun task: cannot tell rank 0's host from {nodes_key}={nodes[:200]!r} ({err}); set "
                         f"MASTER_ADDR") from None
    world_key = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
    world = whole(env, world_key, least=1)
    rank = whole(env, "SLURM_PROCID")
    if rank >= world:
        raise SlurmError(f"SLURM_PROCID={rank} but {world_key}={world}: an srun task's rank is one of 0 to "
                         f"{world - 1}; {SET_BY_SRUN}")
    job, step = whole(env, "SLURM_JOB_ID", default=0), whole(env, "SLURM_STEP_ID")
    whole(env, "SLURM_RESTART_COUNT", default=0)  # the start line shows it
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(whole(env, "SLURM_LOCALID", default=0)),
            "NODE_RANK": str(whole(env, "SLURM_NODEID", default=0)), "MASTER_ADDR": first,
            "MASTER_PORT": str(rendezvous_port(job, step))}


SET_BY_SRUN = "srun sets these: start train.py with srun, or unset the SLURM_* variables to run it outside Slurm"


def whole(env: Mapping[str, str], key: str, least: int = 0, default: Optional[int] = None) -> int:
    """The whole number `env[key]` (at least `least`; `default` when it is unset or empty), as Slurm sets it; a
    SlurmError naming the variable and its value otherwise."""
    text = env.get(key, "")
    if text == "" and default is not None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 18 and int(text) >= least):
        raise SlurmError(f"{key}={text[:40]!r}: Slurm sets a whole number of at least {least} there; {SET_BY_SRUN}")
    return int(text)


def adopt_srun_env(env: MutableMapping[str, str]) -> bool:
    """In an `srun` task that no launcher of its own started (torchrun and DeepSpeed's set RANK, and win): sets the
    torch.distributed variables from Slurm's; returns whether it did."""
    if "RANK" in env or not in_srun_step(env):
        return False
    env.update(srun_env(env))
    return True


def describe_step(env: Mapping[str, str]) -> str:
    """`srun (Slurm job 7, step 0, restart 1)`: the start line's name of the launcher."""
    restarts = whole(env, "SLURM_RESTART_COUNT", default=0)
    return (f"srun (Slurm job {env.get('SLURM_JOB_ID', '?')}, step {env.get('SLURM_STEP_ID', '?')}"
            + (f", restart {restarts}" if restarts else "") + ")")


def lone_batch_shell(env: Mapping[str, str]) -> Optional[str]:
    """A warning when train.py runs, as one process, in the batch shell of a job that has several tasks (it was not
    started with srun); None otherwise."""
    if in_srun_step(env) or "SLURM_JOB_ID" not in env or env.get("WORLD_SIZE", "1") != "1":
        return None
    tasks = whole(env, "SLURM_NTASKS", least=1, default=1)
    if tasks <= 1:
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
