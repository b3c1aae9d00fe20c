"""Independent tasks, run here one after another or as Ray tasks on a cluster.

The corpus shards go through :func:`run_tasks`: the same function and arguments either way, so a
result never depends on where it ran. Ray is optional (the ``[tune]`` extra) and used through its
plain ``ray.remote`` / ``ray.wait`` API only when an address is configured; joining it, and the
one-line errors where that fails, are cprec_recbole/ray_cluster.py's.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cprec_recbole.errors import ConfigError, DataError
from cprec_recbole.ray_cluster import connect


def run_tasks(
    fn: Callable[[Any, Any], Any],
    inputs: Iterable[Any],
    shared: Any,
    ray_address: str | None = None,
) -> Iterator[tuple[int, Any]]:
    """``(i, fn(input_i, shared))`` for every input, in input order here; with ``ray_address``
    as Ray tasks, in order of completion, ``shared`` sent once and at most one task per cluster
    CPU in flight (inputs are drawn lazily, so only those are held)."""
    if not ray_address:
        for index, item in enumerate(inputs):
            yield index, fn(item, shared)
        return
    yield from _ray_tasks(fn, inputs, shared, ray_address)


def _pickled_call(fn: Callable[[Any, Any], Any], item: bytes, shared: Any) -> bytes:
    """``fn`` on a pickled input, its result pickled: Ray moves plain bytes, so no serializer of
    its own (Ray 2.6's for Arrow tables breaks on current setuptools) touches the data."""
    return pickle.dumps(fn(pickle.loads(item), shared), protocol=5)


def _ray_tasks(fn, inputs: Iterable[Any], shared: Any, address: str) -> Iterator[tuple[int, Any]]:
    ray = connect(address, purpose=f"ray_address={address!r}")
    remote = ray.remote(_pickled_call)
    shared_ref = ray.put(shared)
    limit = max(1, int(ray.cluster_resources().get("CPU", 1)))
    todo, pending = enumerate(inputs), {}
    while True:
        while len(pending) < limit and (task := next(todo, None)) is not None:
            blob = pickle.dumps(task[1], protocol=5)
            pending[remote.remote(fn, blob, shared_ref)] = task[0]
        if not pending:
            return
        (done,), _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(done)
        try:
            result = pickle.loads(ray.get(done))
        except Exception as exc:  # a task's bad-input error, as if it had run here
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ConfigError | DataError):
                raise cause from None
            raise
        yield index, result
