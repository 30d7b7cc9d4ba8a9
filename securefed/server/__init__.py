"""The federation coordinator: a round loop, a mailbox for the members, one driver per mode, gRPC.

Nothing here depends on the member's package: what both sides agree on is ``securefed.protocol``.

* ``config``            ``server.toml`` (ServerConfig), validated, with the setups it refuses
* ``app``               assembles config, strategy, plan, driver, coordinator and gRPC server (``ServerApp``)
* ``coordinator``       the round loop: recover, wait for clients, run an attempt, commit or abort
* ``mailbox``           registry, what each member is handed next (notices, long-poll), header checks, intake
* ``transfers``         resumable uploads (admitted before buffering) and downloads from any offset
* ``uploads``           the uploads held while they arrive: one incomplete per member, freed with the attempt
* ``liveness``          which cohort members are alive (heartbeats, polls, messages) or were refused; ``ClientInfo``
* ``budget_watch``      members out of privacy budget sit out; when the federation ends (or waits) for it
* ``attempt``           the data of one attempt: ``AttemptContext``, ``Phase``, ``RoundOutcome``
* ``driver``            the ``RoundDriver`` contract and the plan stage every mode shares
* ``secagg_driver``     pairwise masking (Bonawitz et al. / SecAgg+) through ``securefed.secagg``
* ``ckks_driver``       CKKS: signed ciphertexts added keylessly, decrypted by the members
* ``plaintext_driver``  DEBUG ONLY: fixed-point uploads in clear, the reference sum
* ``service``           the gRPC servicer: authenticate, hand over to mailbox/transfers/coordinator
* ``roundlog``          the SQLite round log (attempts, privacy events), crash-safe
* ``checkpoint``        the global adapter after each round, one atomic bundle file per round
* ``livestatus``        the live state: GetStatus, and ``state_dir/live.json`` (a dead server shows as dead)
* ``security_log``      security alerts seen or reported, ERROR lines and ``security-alerts.jsonl``, limited per source
* ``culprits``          members proven to break the protocol (``secagg.attribution``): recorded, never drawn again
* ``status_view``       ``securefed status``: round log + live state + alerts, ``--watch``
* ``preflight``         ``securefed server --check``: everything that can be validated offline
* ``cli``               ``securefed server``, ``securefed status``, ``securefed ckks-init``
"""
