-- A share waits for its invitee to accept it (`sharing.accept`): until then it is an
-- invitation, not a membership. Nothing of the folder reaches their view, quota or devices,
-- so nobody can put a folder into a stranger's tree, nor make their devices download it.
-- One row per (namespace, invitee); the owner's `share` again changes its access, and an
-- accept, a decline or an unshare deletes it.
CREATE TABLE IF NOT EXISTS share_invites (
    ns_id       bigint NOT NULL REFERENCES namespaces (ns_id),
    user_id     text NOT NULL REFERENCES users (user_id),
    access      text NOT NULL CHECK (access IN ('editor', 'viewer')),
    invited_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ns_id, user_id)
);
-- An invitee's invitations, newest last (`/v1/shares`, and the cap on how many one holds).
CREATE INDEX IF NOT EXISTS share_invites_by_user ON share_invites (user_id, invited_at);
