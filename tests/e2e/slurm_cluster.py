"""A real one-node Slurm cluster on this machine for the tests: Debian's `munge` and `slurm-wlm` daemons (munged,
slurmctld, one slurmd with this machine's CPUs), every file in a temporary folder, every daemon stopped by its pid.
Needs root (the daemons switch users, slurmd runs tasks as the submitting user) and the packages; `.ci/run` installs
them. `unavailable()` says in one line why a cluster cannot be started here.

    with LocalSlurm(tmp_path) as slurm:
        subprocess.run(["sbatch", ...], env=slurm.env(os.environ))
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # the daemons live in sbin


def unavailable() -> Optional[str]:
    """Why no local Slurm can be started here (None when it can)."""
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd starts tasks as their user): run as root, as .ci/run does"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=_PATH) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge, as .ci/run "
                f"does")
    return None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalSlurm:
    """slurmctld + slurmd + munged on localhost, state and logs under `root`; one node (this host's name) with this
    machine's CPUs in the one partition `debug`; jobs may be requeued."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]  # slurmctld knows itself by the short name
        # the node's name is what tasks find in SLURM_STEP_NODELIST and meet rank 0 at: this host's name where it
        # resolves (as on a cluster), else localhost
        self.node = self.host if _resolves(self.host) else "localhost"
        self.pids: dict[str, int] = {}

    # -------------------------------------------------------------------------------------------- configuration

    def write_config(self) -> Path:
        r = self.root
        for sub in ("munge", "state", "spool"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, d_port = free_ports(2)
        lines = {
            "ClusterName": "local", "SlurmctldHost": f"{self.host}(127.0.0.1)", "SlurmctldPort": ctld_port,
            "SlurmdPort": d_port, "AuthType": "auth/munge", "CredType": "cred/munge",
            # cred_expire: how long a requeued job waits before it may start again (default 120 s; under 5 is
            # ignored). As with the defaults (120 s, KillWait 30 s), longer than the old srun waits for its step
            # (KillWait + 2 s): an old srun still waiting would cancel the new run's step, which has the same id.
            "AuthInfo": f"socket={r / 'munge' / 'munge.sock'},cred_expire=8",
            "SlurmUser": "root", "SlurmdUser": "root", "StateSaveLocation": r / "state",
            "SlurmdSpoolDir": r / "spool", "SlurmctldPidFile": r / "slurmctld.pid", "SlurmdPidFile": r / "slurmd.pid",
            "SlurmctldLogFile": r / "slurmctld.log", "SlurmdLogFile": r / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none", "SwitchType": "switch/none",
            "MpiDefault": "none", "SchedulerType": "sched/builtin", "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core", "SchedulerParameters": "sched_interval=1",
            "ReturnToService": 2, "JobRequeue": 1, "KillWait": 5, "MinJobAge": 300, "InactiveLimit": 0,
            "FirstJobId": 1000 + int.from_bytes(os.urandom(2), "little") % 50000,  # ports differ between clusters
        }
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        text += (f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN\n"
                 f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n")
        conf = r / "slurm.conf"
        conf.write_text(text)
        return conf

    def env(self, base: Optional[dict] = None) -> dict:
        """`base` (os.environ by default) with this cluster's SLURM_CONF and the daemons' folders on PATH."""
        base = dict(os.environ if base is None else base)
        return {**base, "SLURM_CONF": str(self.root / "slurm.conf"), "PATH": _PATH}

    # -------------------------------------------------------------------------------------------- start and stop

    def start(self, timeout_s: float = 60) -> "LocalSlurm":
        conf, r = self.write_config(), self.root
        env = self.env()
        self._daemon("munged", ["munged", "--force", f"--key-file={r / 'munge' / 'munge.key'}",
                                f"--socket={r / 'munge' / 'munge.sock'}", f"--pid-file={r / 'munge' / 'munged.pid'}",
                                f"--log-file={r / 'munge' / 'munged.log'}", f"--seed-file={r / 'munge' / 'seed'}"],
                     r / "munge" / "munged.pid", env)
        self._daemon("slurmctld", ["slurmctld", "-f", str(conf)], r / "slurmctld.pid", env)
        self._daemon("slurmd", ["slurmd", "-f", str(conf), "-N", self.node], r / "slurmd.pid", env)
        deadline = time.monotonic() + timeout_s
        while True:  # the node registers with the controller, then takes jobs
            state = self.run(["sinfo", "-h", "-N", "-o", "%t"], check=False).stdout.strip()
            if state.startswith("idle"):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Slurm node is {state or 'not known'} after {timeout_s:.0f} s:\n"
                                   + self.logs())
            time.sleep(0.2)

    def _daemon(self, name: str, cmd: list[str], pid_file: Path, env: dict) -> None:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)  # each forks into the background
        if done.returncode != 0:
            raise RuntimeError(f"{name} did not start ({done.returncode}): {done.stderr.strip()}\n{self.logs()}")
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} wrote no pid file {pid_file}\n{self.logs()}")
            time.sleep(0.05)
        self.pids[name] = int(pid_file.read_text().split()[0])

    def stop(self) -> None:
        """Every daemon, by its pid: SIGTERM to all, SIGKILL to any still there after 10 s. Jobs still running are
        cancelled first."""
        if "slurmctld" in self.pids:
            self.run(["scancel", "--full", "-u", "root"], check=False)
            deadline = time.monotonic() + 30  # KillWait (5 s) and some: their slurmstepd need the daemons to end
            while self.run(["squeue", "-h", "-t", "R,CG"], check=False).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        _end([self.pids.pop(name) for name in DAEMONS if name in self.pids])

    def __enter__(self) -> "LocalSlurm":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------------------------------------- use

    def run(self, cmd: list[str], check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, env=self.env(kwargs.pop("env", None)), capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job`'s fields (JobState, Restarts, ExitCode, ...)."""
        text = self.run(["scontrol", "show", "job", "-o", job_id]).stdout
        return dict(f.split("=", 1) for f in text.split() if "=" in f)

    def logs(self) -> str:
        out = []
        for log in (self.root / "slurmctld.log", self.root / "slurmd.log", self.root / "munge" / "munged.log"):
            if log.exists():
                out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)


def _resolves(name: str) -> bool:
    try:
        socket.gethostbyname(name)
    except OSError:
        return False
    return True


def _end(pids: list[int], grace_s: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
