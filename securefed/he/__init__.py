"""CKKS (TenSEAL) aggregation: clients share a secret key, the server adds ciphertexts keylessly.

Safe, whole operations only::

    from securefed import he
    client = he.generate_client_context("ckks-n4096-q56-s40")      # provisioning
    server_ctx = he.ServerContext.from_public_bytes(client.public_bytes(), "ckks-n4096-q56-s40")
    agg = he.ServerAggregator(server_ctx, length=len(update))
    agg.add(client.encrypt(update).to_chunks(), sender="org-a")
    total = client.decrypt(agg.result_chunks(), len(update))

``params`` and ``wire`` are pure Python; everything else imports TenSEAL lazily on first use.
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
    "ServerAggregator": "securefed.he.aggregate",
    "EncryptedVector": "securefed.he.vector",
}

__all__ = [
    "CkksParams",
    "DEFAULT_PARAMS_NAME",
    "PARAMETER_SETS",
    "get_params",
    *_LAZY,
]


_SUBMODULES = frozenset({"keys", "aggregate", "vector", "wire", "params"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``he.keys.generate_client_context`` works without an explicit import
        return importlib.import_module(f"securefed.he.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'securefed.he' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
