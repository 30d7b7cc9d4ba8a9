"""Real tasks that ship with the project's setup, written as members' JSONL files (``securefed task``).

``icd10``: clinical coding on the ICD-10-CM tabular list, non-IID by chapter (specialty).
"""
