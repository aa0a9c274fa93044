"""Slurm (training/slurm.py), in process: node lists (tests/node_lists.py), an srun task's rank layout, the warning
signal that checkpoints and requeues, the launcher whose end stops a rank. (A real one-node Slurm started on this
machine: e2e/test_slurm_cluster.py.)"""
from __future__ import annotations

import os
import re
import signal

import pytest
from node_lists import EXPANDED, REFUSED, UNBALANCED, hostnames

import train
from training import TrainingError
from training.distributed import cuda_index
from training.faults import Peers, StopSignal, Watchdog
from training.slurm import (SlurmError, adopt_srun_env, first_host, host_count, lone_batch_shell, rendezvous_port,
                            requeue, srun_env)

# ------------------------------------------------------------------------------------------------ node lists, ranks

@pytest.mark.parametrize("nodelist", sorted(EXPANDED))
def test_node_lists_expand_as_slurm_expands_them(nodelist):
    assert hostnames(nodelist) == EXPANDED[nodelist]


@pytest.mark.parametrize("nodelist", REFUSED + UNBALANCED)
def test_a_node_list_slurm_would_refuse_is_refused_naming_it(nodelist):
    with pytest.raises(SlurmError, match=f"invalid Slurm node list {re.escape(repr(nodelist))}"):
        hostnames(nodelist)


def srun_task(**more) -> dict:
    """The variables of task 3 of an `srun` step of 8 tasks on gpu007 and gpu008 (node 1, local 1 of 4)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
            "SLURM_NODEID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_NODELIST": "gpu[007-008]", **more}


def test_an_srun_task_takes_its_rank_world_and_rendezvous_from_slurm():
    env = srun_task()
    assert adopt_srun_env(env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR")} == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "NODE_RANK": "1", "MASTER_ADDR": "gpu007"}
    assert env["MASTER_PORT"] == str(rendezvous_port(4242, 0))
    # every task of a step meets on one port; another step of the job, or another job, on another one
    ports = {rendezvous_port(job, step) for job in range(4242, 4250) for step in range(4)}
    assert len(ports) == 32 and all(20000 <= p < 50000 for p in ports)
    # a step of 2 tasks inside a job of 8: the step's count is the world
    assert srun_env(srun_task(SLURM_STEP_NUM_TASKS="2", SLURM_PROCID="1"))["WORLD_SIZE"] == "2"


def test_variables_a_launcher_set_win_over_slurms():
    env = srun_task(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")  # torchrun under srun
    assert not adopt_srun_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("0", "2", "29500")


def test_the_batch_shell_is_one_process_and_says_how_to_use_the_tasks():
    shell = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}  # no SLURM_STEP_ID: not an srun task
    assert not adopt_srun_env(dict(shell))
    assert "batch shell of Slurm job 7, which has 2 tasks: start it with `srun python train.py" in lone_batch_shell(
        shell)
    assert lone_batch_shell({**shell, "SLURM_NTASKS": "1"}) is None
    assert lone_batch_shell(srun_task()) is None


def test_a_node_list_without_rank_0s_host_is_one_line(monkeypatch, capsys):
    for key, value in srun_task(SLURM_STEP_NODELIST="gpu[2-1]").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RANK", raising=False)
    assert train.main(["--config", "configs/tiny_cpu.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: srun task: cannot tell rank 0's host from SLURM_STEP_NODELIST='gpu[2-1]' (invalid Slurm "
                   "node list 'gpu[2-1]': range '2-1'); set MASTER_ADDR"]


def test_a_rank_uses_the_gpu_slurm_gave_it():
    assert cuda_index(3, 8) == 3
    assert cuda_index(3, 1) == 0  # srun --gpus-per-task=1: each task sees its own GPU only
    with pytest.raises(TrainingError, match=r"LOCAL_RANK 3 but this process sees 2 GPU\(s\).*--gpus-per-task=1"):
        cuda_index(3, 2)


def test_the_start_line_lays_the_ranks_out_by_host():
    assert Peers([("vm", 10), ("vm", 11)], 0).layout() == "2 ranks on 1 node (vm: ranks 0-1)"
    assert Peers([("solo", 1)], 0).layout() == "1 rank on 1 node (solo: rank 0)"
    many = [(f"gpu{n:03d}", n) for n in range(6) for _ in range(8)]
    assert Peers(many, 0).layout() == ("48 ranks on 6 nodes (gpu000: ranks 0-7, gpu001: ranks 8-15, gpu002: ranks "
                                       "16-23, gpu003: ranks 24-31, … 2 more)")


@pytest.fixture
def handlers():
    """The signal handlers as they were, put back after the test."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("first,then,cause,requeue", [
    (signal.SIGUSR1, signal.SIGTERM, "SIGUSR1", True),  # the warning, then Slurm's SIGTERM as the job is requeued
    (signal.SIGUSR1, signal.SIGUSR1, "SIGUSR1", True),
    (signal.SIGTERM, signal.SIGUSR1, "SIGTERM", False),  # a plain stop stays one
    (signal.SIGINT, signal.SIGTERM, "SIGINT", False),
])
def test_the_first_signal_decides_and_a_second_changes_nothing(handlers, first, then, cause, requeue):
    stop = StopSignal("USR1")
    os.kill(os.getpid(), first)
    os.kill(os.getpid(), then)
    assert (stop.received, stop.requeue) == (cause, requeue)


def test_once_the_checkpoint_is_written_further_signals_are_ignored_to_the_end(handlers):
    stop = StopSignal("USR1")
    os.kill(os.getpid(), signal.SIGUSR1)
    stop.ignore_further()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):  # SIG_IGN: kept while Python exits, unlike a handler
        assert signal.getsignal(sig) == signal.SIG_IGN
        os.kill(os.getpid(), sig)
    assert (stop.received, stop.requeue) == ("SIGUSR1", True)


def test_the_requeue_signal_is_configurable_or_off(handlers):
    stop = StopSignal("USR2")
    os.kill(os.getpid(), signal.SIGUSR2)
    assert (stop.received, stop.requeue) == ("SIGUSR2", True)
    before = signal.getsignal(signal.SIGUSR1)
    StopSignal(None)
    assert signal.getsignal(signal.SIGUSR1) is before  # run.requeue_signal none: USR1 is left alone


def test_outside_slurm_nothing_requeues_and_the_line_says_so():
    assert requeue({}) == "not a Slurm job, so nothing requeues it: start it again with --resume auto"


def test_a_rank_told_of_a_stop_names_the_launcher_it_shares(handlers):
    """Each rank's watchdog thread looks at its launchers once a second; the check step that tells a rank of another
    rank's stop makes it look at once, so the ranks of a node name the launcher that ended alike (rank 0's line
    said "a signal on another rank" when rank 1's thread had looked first)."""
    import psutil

    stop = StopSignal(None)
    watchdog = Watchdog(stop, timeout_s=60, rank=0, on_stall=lambda step, waited: None)  # its thread never starts
    read_end, write_end = os.pipe()
    child = os.fork()  # a stand-in launcher that runs until told to end: forked, so no program starts
    if child == 0:
        os.read(read_end, 1)
        os._exit(0)
    try:
        watchdog.launchers = [(psutil.Process(child), f"torchrun (pid {child})")]
        watchdog.check_launchers()
        assert stop.received is None  # it runs
    finally:  # the stand-in ends whatever happened above
        os.write(write_end, b"x")
        os.waitpid(child, 0)
        os.close(read_end), os.close(write_end)
    watchdog.check_launchers()
    assert stop.received == f"the end of its launcher torchrun (pid {child})"
    watchdog.check_launchers()  # a launcher gone stays the first cause, named once
    assert stop.received == f"the end of its launcher torchrun (pid {child})"


# ------------------------------------------------------------------------------- Slurm variables Slurm would not set

@pytest.mark.parametrize("more, message", [
    ({"SLURM_PROCID": "8"}, "SLURM_PROCID=8 but SLURM_STEP_NUM_TASKS=8: an srun task's rank is one of 0 to 7; "),
    ({"SLURM_PROCID": "-1"}, "SLURM_PROCID='-1': Slurm sets a whole number of at least 0 there; "),
    ({"SLURM_STEP_NUM_TASKS": "", "SLURM_NTASKS": "two"},
     "SLURM_NTASKS='two': Slurm sets a whole number of at least 1 there; "),
    ({"SLURM_STEP_NUM_TASKS": "0"}, "SLURM_STEP_NUM_TASKS='0': Slurm sets a whole number of at least 1 there; "),
    ({"SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID='abc': Slurm sets a whole number of at least 0 there; "),
    ({"SLURM_LOCALID": "1.5"}, "SLURM_LOCALID='1.5': Slurm sets a whole number of at least 0 there; "),
    ({"SLURM_RESTART_COUNT": "x"}, "SLURM_RESTART_COUNT='x': Slurm sets a whole number of at least 0 there; "),
])
def test_a_slurm_variable_slurm_would_not_set_is_one_line_naming_it(more, message):
    """A rank outside the step's tasks waited for ranks that never come; a count or id that is not a number was a
    traceback."""
    with pytest.raises(SlurmError) as caught:
        srun_env(srun_task(**more))
    said = str(caught.value)
    assert said.startswith(message) and said.endswith(
        "srun sets these: start train.py with srun, or unset the SLURM_* variables to run it outside Slurm"), said
    assert "\n" not in said


def test_train_py_refuses_a_rank_beyond_the_step_in_one_line(monkeypatch, capsys):
    for key, value in srun_task(SLURM_PROCID="8").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RANK", raising=False)
    assert train.main(["--config", "configs/tiny_cpu.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: SLURM_PROCID=8 but SLURM_STEP_NUM_TASKS=8"), err


def test_the_batch_shell_with_a_task_count_that_is_no_number_is_one_line():
    with pytest.raises(SlurmError, match=r"^SLURM_NTASKS='two': Slurm sets a whole number of at least 1 there"):
        lone_batch_shell({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "two"})


def test_a_node_list_of_a_trillion_hosts_gives_its_first_and_its_count_without_listing_them():
    """Rank 0's host is the list's first; listing every host to find it took 3 GiB for this list."""
    import tracemalloc

    nodelist = "node[000000000001-999999999999],gpu[1-2]x[5-7]"
    tracemalloc.start()
    try:
        first, count = first_host(nodelist), host_count(nodelist)
        env = srun_env(srun_task(SLURM_STEP_NODELIST=nodelist))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (first, count, env["MASTER_ADDR"]) == ("node000000000001", 999_999_999_999 + 6, "node000000000001")
    assert peak < 1 << 20, peak


@pytest.mark.parametrize("nodelist", sorted(EXPANDED))
def test_the_first_host_and_the_count_agree_with_the_expanded_list(nodelist):
    assert (first_host(nodelist), host_count(nodelist)) == (EXPANDED[nodelist][0], len(EXPANDED[nodelist]))


@pytest.mark.parametrize("nodelist", REFUSED + UNBALANCED + ["", ",", "n[1234567890123456789]"])
def test_a_node_list_slurm_would_refuse_has_no_first_host(nodelist):
    with pytest.raises(SlurmError, match="invalid Slurm node list"):
        first_host(nodelist)
