-- Each block-key version's fingerprint (`tessera.blocks.key_fingerprint`), recorded the
-- first time a process meets the version: a later start whose key service holds another
-- secret under that version (a key file from another state dir, an overwritten parameter)
-- is refused before any block is stored or judged under it (`tessera.metadata.key_check`).
CREATE TABLE IF NOT EXISTS key_fingerprints (
    key_version integer PRIMARY KEY,
    fingerprint bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
