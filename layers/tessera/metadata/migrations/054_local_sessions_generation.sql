-- Local cloud identity: `tessera local passwd` signs sessions out by generation, not by
-- time. 053 compared a refresh token's `iat` (whole seconds, the gateway's clock) with the
-- reset's `now()` (microseconds, the database's clock): a sign-in in the second after a
-- reset was signed out at its first refresh, and clocks apart (an external DATABASE_URL)
-- let older sessions through. A refresh token now carries the generation it was signed in
-- under; a reset moves it on. Users who had reset start at 1: their tokens, all without
-- one, sign in again once.
ALTER TABLE local_users ADD COLUMN IF NOT EXISTS sessions_generation integer NOT NULL DEFAULT 0;
UPDATE local_users SET sessions_generation = 1 WHERE sessions_after IS NOT NULL;
ALTER TABLE local_users DROP COLUMN sessions_after;
