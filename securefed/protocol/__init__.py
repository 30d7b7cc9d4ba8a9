"""What the member and the coordinator agree on, in one place that both import.

Neither ``securefed.client`` nor ``securefed.server`` imports the other: the member runs code that
must hold against a hostile server, so it depends only on this shared vocabulary, never on the
coordinator's files.

* ``plan``         the round plan: canonical bytes, digest, sealing, structural checks, cohort ids
* ``bundle``       the global bundle (adapter vector + layout + settings + server state): format, digest
* ``secagg_wire``  protobuf <-> secure-aggregation messages, both directions
* ``ckks``         the CKKS mode's stages and messages: contributions, confirmations, decrypted sums
* ``plaintext``    the plaintext (debug) mode's upload: fixed point in the plan's ring
* ``stages``       stage names, and the secagg stages on the wire
"""
