"""A Lambda function's init: the import of its handler module, once per sandbox.

Init builds a few hundred thousand objects that live as long as the sandbox: modules,
classes, pydantic schemas, botocore's service models. While it runs, the collector's
generational passes walk them again and again (in the api function: about 210 young, 20
middle and one full collection), and after it every full collection walks them once more,
for nothing: none of them is garbage. `lambda_init` keeps the collector off during init
and then freezes what init built (`gc.freeze`), so later collections skip it. The api
function's cold start: 35-50 ms less in an alternating A/B (bench/bench_aws.py).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def lambda_init() -> Iterator[None]:
    """Wrap a handler module's init (its imports and wiring) in this block."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
