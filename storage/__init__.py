"""Persistence for selfheal: SQLModel tables, the engine factory, queries, the audit chain, migrations.

Modules (import them directly; this package imports nothing heavy so the CLI starts fast):
  storage.models     all tables (Image, Check, Heal, Alert, AuditEvent, AuditHead, WorkerHeartbeat,
                     RunRequest, TuningIntent, TuningRun, TuningCandidate, Promotion, TuningRateLimit)
  storage.engine     get_engine(url=None), session_scope(url=None, *, write=True), DatabaseError mapping
  storage.migrate    upgrade(url=None), current_revision(url=None), head_revision()
  storage.audit      append_event(session, kind, subject, payload, actor), verify_chain(session)
  storage.ratelimit  RateLimits, claim_run_slot(session, subsystem, limits, now), rate_limit_state(...)
  storage.queries    plain-data reads and audited writes for the worker, dashboard and CLI
  storage.commands   `selfheal audit verify`, `selfheal db upgrade`

Typical use:
    from storage.migrate import upgrade
    from storage.engine import session_scope
    from storage import queries

    upgrade()                                    # once per process, idempotent
    with session_scope() as session:             # write: BEGIN IMMEDIATE on SQLite, commit on exit
        queries.record_check(session, result_dict, file_sha256=digest)
    with session_scope(write=False) as session:  # read-only page
        rows = queries.list_images_with_latest_status(session)
"""
