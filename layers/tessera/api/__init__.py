"""The HTTP API (DESIGN §5): one Powertools `APIGatewayRestResolver` for Lambda and local.

`build_resolver(services)` imports Powertools lazily so that `tessera.api.models` stays
importable by the sync client without the server extras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver

    from tessera.domain.services import Services


def build_resolver(services: Services, *, longpoll: bool = True) -> APIGatewayRestResolver:
    """The API app wired to `services`; call `.resolve(event, context)` with a REST proxy
    event. `longpoll=False` leaves out the long-poll's route (the api function's)."""
    from tessera.api.app import build_resolver as _build

    return _build(services, longpoll=longpoll)


__all__ = ["build_resolver"]
