-- An outbox row's event_id is `ns<ns_id>-<seq>`, written only by the journal statement
-- (tessera.metadata.store), so the primary key (ns_id, seq) already makes it unique; its own
-- unique index cost every commit one more index entry. The relay marks rows by key.
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_event_id_key;
