"""Running a subprocess that file permissions apply to, even when the tests run as root."""

from __future__ import annotations

import os
import shutil

import pytest


def permission_bound_prefix() -> tuple[str, ...]:
    """The command prefix under which a chmod-000 file or folder is unreadable: nothing for
    an ordinary user; for root (which reads them anyway), util-linux `setpriv` dropping its
    DAC override. Skips the test when root has no `setpriv`."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux setpriv is not installed")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search")
