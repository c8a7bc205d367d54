-- Events the change feed refuses for good: its key (ns_id, seq) already holds another event,
-- so the journal and the feed disagree (a database restored to an earlier point hands a seq
-- out again; docs/deploy.md, "Dead-lettered events").
-- The relay used to retry such a row at every sweep, and since it
-- claims the oldest rows first, every event queued behind it waited forever. It now moves the
-- row here, delivers the rest, and counts it in `OutboxDeadLettered` (an alarm).
CREATE TABLE outbox_dead (
    ns_id       bigint NOT NULL,
    seq         bigint NOT NULL,
    event_id    text NOT NULL,
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    dead_at     timestamptz NOT NULL DEFAULT now(),
    error       text NOT NULL,
    PRIMARY KEY (ns_id, seq)
);
