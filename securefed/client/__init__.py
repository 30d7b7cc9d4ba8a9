"""The member's daemon: pulls round plans, enforces its own privacy budget, trains with DP-SGD,
protects its update (secure aggregation or CKKS), and writes its ledger entry before release.

It imports the shared vocabulary (``securefed.protocol``), never the coordinator's package:
the code that must hold against a hostile server does not depend on the server's files.

* ``cli``                ``securefed client --config client.toml`` (``--check``: ``preflight``, offline)
* ``config``             ``ClientConfig``: the member's client.toml
* ``daemon``             ``ClientDaemon``: dispatches each task to the parts below, in the order of a round
* ``pull_loop``          register, long-poll, reconnect with backoff; ends sessions on typed errors (security warnings)
* ``connection``         the stub: unary calls, resumable streamed download/uploads with progress, error mapping
* ``admission``          pure: plan + bundle + config -> leave (``ProtocolAbort``), decline (reason), or go on; cohort,
                         threshold and colluder-bound rules together (``cohort_reason``), the base-model rule
* ``bundle_check``       the global bundle the server sends, decoded as untrusted input (typed errors only)
* ``budget``             ``BudgetPlanner``: feasibility at start-up, the planned DP event, noise calibration (cap
                         and both accountants), planned rounds, the guard's memoised verdict
* ``trainer``            ``Trainer``: base model + LoRA, data, DP-SGD rounds, evaluation, PEFT export
* ``session``            ``RoundSession``: one attempt as typed state; what protocol adapters share
* ``release``            ledger first, then the update: the DP event durable and reported before anything leaves
* ``secagg_session``     tasks -> ``SecAggClient`` messages, member-side graph guard
* ``ckks_session``       contribute, confirm one contributor set, decrypt only what was checked
* ``plaintext_session``  debugging only: the update in clear, when the member opted in
* ``cohort``             every listed member's certificate against the pinned federation CA and its revocation list
* ``certificates``       own certificate at start-up, TLS failures explained, the newest revocation list kept
* ``dataset``            the member's dataset fingerprint and its ledger (one per dataset, across federations)
* ``guards``             ``GraphGrindingGuard``: bounds SecAgg+ graph retries per window and per session it finished
* ``member_state``       SQLite: last attempt acted on (replays refused), grinding counts, CKKS confirmations
* ``global_intake``      every global adapter the server sends: decoded as untrusted input, digest-checked, kept
* ``global_store``       the latest global adapter and SCAFFOLD's client state on disk (disk full: one line)
* ``heartbeat``          liveness while working on an attempt: what it does, training step i of n
* ``alerts``             which failures are security events; reporting them to the operator
* ``preflight``          ``--check``: config, credentials and expiry, ledger, model, data, budget feasibility
* ``hooks``              ``MemberHooks``: observers tests inject (fault points, releases, outcomes)
* ``progress``           tqdm on a terminal, clean log lines otherwise
"""
