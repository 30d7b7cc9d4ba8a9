"""Evaluation on the task, not only perplexity (``securefed eval``).

``metrics``: exact match, token F1, ROUGE-L, the category of a code, multiple-choice accuracy (pure
Python); ``generate``: deterministic greedy generations with a fixed budget; ``loading``: a base model
with the global adapter file securefed writes, or a PEFT adapter directory; ``task``: held-out loss and
perplexity on the answer tokens plus the task metric, as one report.
"""
