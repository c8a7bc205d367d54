"""The start/serve/stop life cycle shared by the local clouds (`LocalCloud`, `AwsLocalCloud`)
and the pieces they start (`MotoCloud`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.local.server import Server


class Stoppable(ABC):
    """Something started that `stop()` stops, also on leaving a `with` block."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it and release what it holds (idempotent)."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServedCloud(Stoppable):
    """A cloud whose gateway app a `Server` serves: `prepare()` wires everything, then
    `start()` serves in a background thread (tests) or `serve_forever()` in the main thread
    (`tessera local up`); a failure on the way stops what was started.

    `with cloud as base_url:` is `start()` ... `stop()`.
    """

    base_url: str
    _server: Server | None
    _app: Any

    @abstractmethod
    def prepare(self) -> str:
        """Start and wire everything but serving; the base URL."""

    def _start_workers(self) -> None:
        """Start what runs beside the server once serving begins (none by default)."""

    def start(self) -> str:
        """`prepare()` and serve in a background thread; returns the base URL."""
        self.prepare()
        try:
            assert self._server is not None
            self._start_workers()
            self._server.start(self._app)
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def serve_forever(self) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM, then stop everything."""
        assert self._server is not None, "call prepare() first"
        try:
            self._start_workers()
            self._server.run(self._app)
        finally:
            self.stop()

    def __enter__(self) -> str:
        return self.start()
