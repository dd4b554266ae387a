"""The REST API of selfheal (`selfheal api`): the image guide's endpoints, the operator workflows,
bearer-token auth and Prometheus metrics, served by uvicorn.

Modules
  commands   `selfheal api [--host H] [--port P]`, `selfheal api token create|list|revoke` (stdlib only at import)
  settings   the ``api:`` section of the configuration (ApiSettings) and the upload limits it shares with the dashboard
  tokens     bearer tokens: create (shown once), list, revoke, authenticate; only their sha256 is stored
  app        create_app(settings=None) -> FastAPI: routers, auth, the body-size limit, one-line JSON errors
  errors     ApiError and the exception handlers ({"success": false, "error": "<one line>"})
  limits     the ASGI middleware that refuses an oversized body before reading it (413)
  guide      GET /health, GET /api/v1/models, POST /api/v1/analyze, /batch, /health-check (the guide's shapes)
  operator   images, run-now requests, promotions, tuning status, tune observe, audit
  metrics    the Prometheus collector that reads the database on each scrape
  server     serve(host, port): uvicorn in the foreground
  main       ``app`` for `uvicorn healing.api.main:app` and `python -m healing.api.main` (the guide's ways)

Nothing heavy is imported here: the CLI imports ``healing.api.commands`` at start-up.
"""
