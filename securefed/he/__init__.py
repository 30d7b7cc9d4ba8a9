"""CKKS (TenSEAL) aggregation: clients share a secret key, the server adds ciphertexts keylessly.

Safe, whole operations only::

    from securefed import he
    client = he.generate_client_context("ckks-n4096-q56-s40")      # provisioning
    server_ctx = he.ServerContext.from_public_bytes(client.public_bytes(), "ckks-n4096-q56-s40")
    agg = he.ServerAggregator(server_ctx, length=len(update))
    agg.add(client.encrypt(update), sender="org-a")            # c0 summed mod q; seeds kept
    total = client.decrypt(agg.result())                       # c1 regenerated from the seeds

Members check a sum before decrypting it with the linear tags of ``he.tags`` (protocols/ckks.md).
``ParallelClientContext`` (``he.parallel``) runs a member's SEAL work for large vectors on several processes.
``params`` and ``vector`` are pure Python; everything else imports TenSEAL lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from securefed.he.params import DEFAULT_PARAMS_NAME, PARAMETER_SETS, CkksParams, get_params

_LAZY = {
    "ClientContext": "securefed.he.keys",
    "ServerContext": "securefed.he.keys",
    "generate_client_context": "securefed.he.keys",
    "load_secret_context": "securefed.he.keys",
    "ParallelClientContext": "securefed.he.parallel",
    "ServerAggregator": "securefed.he.aggregate",
    "EncryptedVector": "securefed.he.vector",
    "EncryptedSum": "securefed.he.vector",
}

__all__ = [
    "CkksParams",
    "DEFAULT_PARAMS_NAME",
    "PARAMETER_SETS",
    "get_params",
    *_LAZY,
]


_SUBMODULES = frozenset({"keys", "aggregate", "vector", "tags", "params", "parallel"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``he.keys.generate_client_context`` works without an explicit import
        return importlib.import_module(f"securefed.he.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'securefed.he' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
