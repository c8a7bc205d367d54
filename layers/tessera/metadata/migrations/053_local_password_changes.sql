-- Local cloud identity: when a user's password was last set anew (`tessera local passwd`).
-- A refresh token issued before it is refused: a password reset after a leak signs out
-- every device that signed in with the old one (Cognito's global sign-out on AWS). A
-- nullable column without a default: no table rewrite.
ALTER TABLE local_users ADD COLUMN IF NOT EXISTS sessions_after timestamptz;
