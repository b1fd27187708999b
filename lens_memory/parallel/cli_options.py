"""The CLI's cluster options (``--ray [ADDRESS] --workers N --threads N``) and what they open."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

__all__ = ["add_cluster_args", "cluster", "executor_from_args", "positive_int"]


def positive_int(text: str) -> int:
    """argparse type: a positive integer, or an error naming the text."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (lens_memory.parallel; needs pip install 'lens_memory[ray]')")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the long loops on Ray workers: alone, a local Ray instance; or a cluster address "
                        "('auto', 'ray://head:10001')")
    g.add_argument("--workers", type=positive_int, default=2, help="Ray workers, each holding the model (default 2)")
    g.add_argument("--threads", type=positive_int, default=1, help="torch threads per CPU worker (default 1)")


def executor_from_args(args: Any) -> Any:
    """A :class:`~lens_memory.parallel.RayExecutor` for ``--ray``, or ``None`` without it."""
    if getattr(args, "ray", None) is None:
        return None
    from .ray_executor import RayExecutor, require_ray

    require_ray()
    return RayExecutor(None if args.ray == "local" else args.ray, args.workers, threads=args.threads)


@contextlib.contextmanager
def cluster(args: Any, lm: Any):
    """Within the block ``lm``'s loops run on the ``--ray`` workers (nothing changes without ``--ray``)."""
    ex = executor_from_args(args)
    if ex is None:
        yield None
        return
    from .executor import using_executor

    try:
        with using_executor(lm, ex):
            yield ex
    finally:
        ex.close()
