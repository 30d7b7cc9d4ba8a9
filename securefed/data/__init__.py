"""The data members actually have: JSONL records read and checked line by line (``records``), then
turned into token ids with the model's own chat template and labels on the answer only (``encode``),
under the member's ``[data]`` settings for over-long records and packing (``settings``).

Pure Python over a tokenizer: nothing here imports torch; ``securefed.training.data`` stacks the
encoded examples into tensors.
"""
