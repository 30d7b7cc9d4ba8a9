"""Real base models: the ones that ship inside installed packages (``securefed model get``), and any GGUF
file a user has (``securefed model import-gguf``), converted once into a safetensors checkpoint
directory that the daemons load like any other.

``sources`` names the packaged models and finds their files (no download, ever); ``gguf_import``
converts a GGUF and checks the result; ``cli`` adds both actions to ``securefed model``.
"""
