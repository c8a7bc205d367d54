"""The simulation reuses the e2e local cloud fixture (in-process)."""

from tests.e2e.conftest import inproc_cloud

__all__ = ["inproc_cloud"]
