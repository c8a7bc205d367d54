-- Local cloud identity: the users the local JWT issuer knows (Cognito's job on AWS).
-- email is stored case-folded (Python str.casefold), so one address is one user whatever its case.
CREATE TABLE IF NOT EXISTS local_users (
    user_id       uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE CHECK (email <> ''),
    password_hash text NOT NULL,  -- argon2id, PHC string format
    created_at    timestamptz NOT NULL DEFAULT now()
);
