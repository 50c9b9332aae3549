"""Starting BESS workers: a command that needs W > 1 workers re-runs itself under torchrun, and each
worker joins the group through the communication seam (kge.dist.comm)."""

from __future__ import annotations

import os
import sys

def launch_workers(workers: int, max_restarts: int, extra_args: tuple = ()) -> None:
    """Re-run this very command under torchrun with ``workers`` local processes (replaces this process).

    torchrun restarts the whole group after any worker dies, up to ``max_restarts`` times; each
    restart resumes from the last complete checkpoint.
    """
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
            f"--max-restarts={max_restarts}", "-m", "kge", *sys.argv[1:], *extra_args]
    # With the rendezvous store shared between torchrun and the workers (the default), restarted
    # workers hang in init_process_group on the previous attempt's keys (pytorch issue 135712), so
    # a run that may restart gives its workers their own store. That store's port comes from a
    # free-port probe (released, then bound again by worker 0): another process can take it in
    # between, which a restart survives. A run without restarts (kge predict, kge bench) keeps the
    # shared store, which torchrun's agent binds once, on a port the system assigns: no such race.
    if max_restarts > 0:
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def join_workers(workers: int, device_name: str, threads: int, max_restarts: int):
    """This process's communicator: for workers > 1, launch torchrun first (unless it launched us)."""
    from kge.dist.comm import launched_world_size, make_comm, worker_device
    from kge.dist.device import resolve_device, set_threads

    if workers > 1 and launched_world_size() == 1:
        launch_workers(workers, max_restarts)
    if workers > 1 and threads:  # the job's threads are shared by the workers on this node
        set_threads(max(1, threads // min(workers, int(os.environ.get("LOCAL_WORLD_SIZE", workers)))))
    return make_comm(workers, worker_device(resolve_device(device_name)))


