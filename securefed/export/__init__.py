"""``securefed export``: a federation's global adapter in the formats serving tools read.

``federated`` loads the base checkpoint with the adapter a federation wrote (securefed's own bundle
file, checked against its digest and the base model's fingerprint); ``peft_dir`` writes it as a PEFT
adapter directory, ``merged`` as a plain transformers checkpoint with the adapter merged in,
``gguf_file`` as a GGUF for llama.cpp/Ollama (Llama architecture); ``checks`` reads each artefact back
with the library that serves it. The bundle format itself stays internal.
"""
