"""Many members on one machine or a Ray cluster (``securefed simulate``), on the member's real training
path and the real aggregation code.

* ``settings``: what a run does (``SimulationSettings``).
* ``split``: the members' non-IID data and the held-out set.
* ``member``: one member's round on the real path (``Workspace``: one base model per worker process).
* ``engine`` / ``ray_engine``: where members run (in this process, or on Ray actors): one interface.
* ``draws``: the seeded cohorts and dropouts; ``aggregation``: the round's sum by the secure-aggregation
  state machines, CKKS, or a plain sum; ``driver``: the rounds; ``records``/``plot``: what comes out.

Submodules are imported explicitly; this package imports nothing heavy on its own.
"""
