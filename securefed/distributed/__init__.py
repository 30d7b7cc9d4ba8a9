"""One member on several processes (``[model] processes = N``): torch.distributed data parallelism
under one Poisson-sampled logical batch, noise added once, so the DP mechanism and the ledger event
are exactly those of the single-process run.

* :mod:`.checks`: whether this machine can run the ranks (devices, backend, batch), for ``--check``
  and start-up;
* :mod:`.group`: rank 0 (the member's daemon) starts, drives and stops its workers;
* :mod:`.worker`: a worker rank (a subprocess; no credentials, no dataset, no ledger);
* :mod:`.collective`: the tensors the ranks exchange; :mod:`.wire`: their JSON control lines.

The training code (``securefed.training.dp``) only sees a ``shard`` function and a ``Collective``;
it does not know how many ranks run it, nor where.

Not built: FSDP (sharding a base that does not fit one device) and ranks on other machines.
"""
