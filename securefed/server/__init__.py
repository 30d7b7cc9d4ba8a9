"""The federation coordinator: round state machine, crash-safe round log and checkpoints, gRPC service.

Layout: ``config`` (ServerConfig), ``roundlog`` (SQLite round log), ``checkpoint`` (atomic
safetensors store), ``logs`` (structured logging shared with the client daemon), ``coordinator``
(the round state machine; no gRPC), ``service`` (the gRPC servicer), ``cli`` (``securefed server``,
``securefed status``).
"""
