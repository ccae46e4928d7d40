"""One thread count for every thread pool of a cell's process.

``torch.set_num_threads`` bounds torch's own pool only.  numpy's OpenBLAS (KID's kernel
matrices in torch-fidelity, scipy's matrix square root in FID) keeps a pool of its own,
sized to the machine's cores when numpy is first imported, which with the forkserver is
in the forkserver, before a cell's ``OMP_NUM_THREADS`` exists.  Two single-thread workers
on two cores then each ran KID on two BLAS threads, and the four fought over the cores:
measured here, the metrics of a cell took 3.5x as long on a busy machine as with one BLAS
thread, to the same bits (OpenBLAS splits a matrix product by output blocks, so every
element is summed in the same order whatever the thread count).  ``threadpoolctl`` (a
scikit-learn dependency) sets the pools that are already loaded.
"""

from __future__ import annotations


def limit_threads(threads: int) -> None:
    """Run torch and every loaded BLAS/OpenMP pool of this process on ``threads`` threads."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # applied now, for the rest of the process
