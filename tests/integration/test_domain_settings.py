"""Settings read once from the environment (pure; kept beside the domain tests it configures)."""

from __future__ import annotations

import pytest

from tessera.settings import Settings


def test_defaults_and_overrides() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.presign_ttl_s <= 900 and s.max_block_size == 4 * 1024 * 1024
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://x/y",
            "TESSERA_UPLOAD_TTL_S": "60",
            "TESSERA_LONGPOLL_MIN_S": "0.5",
            "UNRELATED": "ignored",
        }
    )
    assert (s.database_url, s.upload_ttl_s, s.longpoll_min_s) == ("postgresql://x/y", 60, 0.5)


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ValueError, match="TESSERA_MAX_FILE_SIZE='lots' is not a valid int"):
        Settings.from_env({"TESSERA_MAX_FILE_SIZE": "lots"})
