"""The member's daemon: pulls round plans, enforces its own privacy budget, trains with DP-SGD,
protects its update (secure aggregation or CKKS), and writes its ledger entry before release.

Layout: ``config`` (ClientConfig), ``daemon`` (the pull loop and one round's session), ``progress``
(tqdm on a terminal, clean log lines otherwise), ``cli`` (``securefed client``).
"""
