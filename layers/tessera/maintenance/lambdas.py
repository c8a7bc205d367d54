"""Lambda entry points of the maintenance workflows (`functions/<function>/handler.py`).

`make_handler(name)` returns the handler of workflow `name`'s function. The AWS adapters
(S3, KMS/SSM, DynamoDB change feed, Aurora pool) are built on the first invocation and
reused while the execution environment stays warm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tessera.domain.errors import Unavailable
from tessera.metadata.key_check import check_block_keys

from .context import MaintenanceContext
from .runner import handle_event
from .settings import MaintenanceSettings
from .workflows import workflow

Handler = Callable[[Mapping[str, Any], Any], dict[str, Any]]


def aws_context() -> MaintenanceContext:
    """A maintenance context over the AWS adapters, configured from the environment."""
    from tessera.adapters.aws.wiring import AwsRuntime

    services = AwsRuntime.from_env().services()
    return MaintenanceContext.build(
        db=services.db,
        store=services.block_store,
        keys=services.keys,
        feed=services.feed,
        settings=MaintenanceSettings.widen(services.settings),
    )


def _aws_transient(exc: BaseException) -> bool:
    from tessera.adapters.aws.errors import is_transient

    return is_transient(exc)


def make_handler(
    name: str,
    build: Callable[[], MaintenanceContext] = aws_context,
    *,
    transient: Callable[[BaseException], bool] = _aws_transient,
) -> Handler:
    """The Lambda handler of workflow `name`: parse the event, run the step, return its
    result. A `transient` failure (an AWS service throttling or failing for a while, past
    botocore's retries) is raised as `Unavailable`, a name the state machine retries with
    backoff: raised as botocore's `ClientError`, one SSM throttle (its ~40 calls a second
    are the account's, and a scale-out's cold starts each list the key versions) failed
    the whole run and paged."""
    decodes_blocks = workflow(name).decodes_blocks  # a typo fails at import, not later
    ctx: list[MaintenanceContext] = []

    def run(event: Mapping[str, Any]) -> dict[str, Any]:
        if not ctx:
            built = build()
            if decodes_blocks:  # under a swapped secret, every block would look damaged
                try:
                    check_block_keys(built.repo.db, built.keys)
                except BaseException:  # the next invocation builds anew: no pool left open
                    built.repo.db.close()
                    raise
            ctx.append(built)
        ctx[0].keys.refresh()  # a rotation, once a minute: here, before any lock is held
        return handle_event(ctx[0], name, event)

    def handler(event: Mapping[str, Any], _context: Any) -> dict[str, Any]:
        try:
            return run(event)
        except Exception as e:
            if isinstance(e, Unavailable) or not transient(e):
                raise
            raise Unavailable(f"{type(e).__name__}: {e}") from e

    return handler
