"""`palisade serve`: the HTTP API (server), the index held in memory (publication), running it on
uvicorn (listen), its OpenAPI description (openapi), and the loop that reconciles on change (service, watch)."""
