"""Members of unequal capacity: a member trains part of the federation's adapter (its top layers, or a
lower LoRA rank, as in HetLoRA) and still uploads the whole layout, zeros where it trained nothing.

* :mod:`.groups` (pure numpy, both parties): the layout's (layer, rank slot) groups and a member's 0/1
  indicator over them, which travels under the same secure aggregation as the update;
* :mod:`.config`: ``[capacity]`` of client.toml;
* :mod:`.partial` (torch, the member): the member's model with only its part trainable, the global
  adapter loaded whole, and its local update placed back into the federation's layout.

How the strategies aggregate such payloads is in :mod:`securefed.strategies.base`.
"""
