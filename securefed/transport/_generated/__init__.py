"""Generated protobuf/gRPC stubs for securefed.v1. Do not edit: run
``python -m securefed.transport.codegen`` after changing protocols/securefed/v1/*.proto."""
