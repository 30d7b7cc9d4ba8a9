"""Differential-privacy accounting for securefed clients and auditors.

- ``events``: ``DpEvent``, the frozen, validated record of one DP-SGD release (epsilon is never stored).
- ``formulas``: pure RDP / PRV maths for Poisson-subsampled Gaussians (Opacus' analysis code).
- ``accountants``: thin ``RdpAccountant`` / ``PrvAccountant`` over event logs and the name registry.
- ``budget``: ``PrivacyBudget`` (config), ``BudgetGuard`` (decline a round before training) and
  ``calibrate_noise`` (sigma for the whole planned run).
- ``ledger``: the per-client, append-only, hash-chained, Ed25519-signed SQLite ledger, one per dataset.
- ``dataset``: the salted dataset fingerprint and every ledger of one dataset counted together.
- ``verify`` / ``report``: independent re-verification (dp-accounting) and the audit report.
- ``federation_context``: what the server's round log adds to an audit (anchors, each round's members).

Submodules are imported explicitly; this package imports nothing heavy on its own.
"""
