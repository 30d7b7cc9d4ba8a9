"""securefed: privacy-preserving federated fine-tuning of LLMs.

LoRA adapters trained with DP-SGD (Opacus) at each member, protected in transit by
pairwise-masked secure aggregation (Bonawitz et al. 2017 / SecAgg+) or CKKS (TenSEAL),
with a per-client, hash-chained privacy ledger.
"""

from securefed import offline as _offline  # noqa: F401  (hub switches, before any HF import)

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
