-- Local cloud identity: refresh tokens signed out (`tessera logout`: POST /v1/auth/revoke),
-- refused by the refresh grant until they would have expired anyway, then deleted. Cognito
-- keeps its own on AWS (RevokeToken).
CREATE TABLE IF NOT EXISTS local_revoked_tokens (
    jti        text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS local_revoked_tokens_expiry ON local_revoked_tokens (expires_at);
