-- Settings of every session on this database (docs/metadata.md, "Generic plans" and "Plans:
-- no sequential scans"). They were startup options of the pool's connections
-- (`options=-c ...`), which RDS Proxy refuses outright ("RDS Proxy currently doesn't support
-- command-line options"): every function behind the proxy failed to connect. A per-session
-- SET would pin each client connection to its own database connection, undoing the proxy's
-- multiplexing. A database default needs neither.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET plan_cache_mode = force_generic_plan',
                   current_database());
    EXECUTE format('ALTER DATABASE %I SET enable_seqscan = off', current_database());
END
$$;
