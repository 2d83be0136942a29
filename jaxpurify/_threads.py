"""Keep the BLAS behind jaxlib's CPU linear algebra to one thread while the solver runs.

jaxlib runs QR, triangular solves and SVD on the CPU through SciPy's OpenBLAS.  Its worker
threads spin-wait after each call and take the cores from XLA's own threads: on a loaded 2-core
machine ``recover`` ran 3–6× slower with the BLAS at its default threading than held to one
thread (``python -m benchmarks.solver``, its ``threads`` line).  The solver's own work is XLA's
matrix products, which are not affected.  Set ``JAXPURIFY_BLAS_THREADS=default`` to leave the BLAS alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_controller = None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Within this block the BLAS libraries loaded in the process use one thread."""
    if os.environ.get("JAXPURIFY_BLAS_THREADS", "").lower() == "default":
        yield
        return
    global _controller
    if _controller is None:
        # jaxlib reaches LAPACK through scipy.linalg.cython_lapack, loaded lazily on its first call:
        # load it now so that the controller sees its OpenBLAS (jaxlib requires SciPy)
        import scipy.linalg.cython_lapack  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield
