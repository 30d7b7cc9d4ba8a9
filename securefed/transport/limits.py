"""Size limits of the securefed wire protocol, set explicitly on both ends.

gRPC's defaults (4 MiB receive, unlimited send) are implicit and differ by language; a federation
should refuse oversized input by policy, not by accident. A 7B-parameter LoRA adapter under CKKS
runs to hundreds of MB, so large payloads are always streamed as chunks, never sent whole.
"""

from __future__ import annotations

from typing import Final

MIB: Final = 1024 * 1024

# Hard cap for one gRPC message, either direction (grpc.max_{send,receive}_message_length).
MAX_MESSAGE_BYTES: Final = 8 * MIB

# The most payload bytes one chunk message may carry (either direction). Half the message cap
# leaves ample room for the header and framing.
CHUNK_BYTES: Final = 4 * MIB

# Payload bytes a sender puts in one chunk of a resumable transfer. A dropped connection loses what
# was in flight: the chunk being assembled and the TCP and HTTP/2 buffers. Measured through a
# cutting relay, an upload loses ~140 kB per cut with 64 KiB chunks against ~400-700 kB with
# 256 KiB; framing stays ~0.3% (TLS records, HTTP/2 frames, ~40 bytes of protobuf per chunk), and
# the Python cost per chunk is tens of microseconds (protocols/transfers.md).
TRANSFER_CHUNK_BYTES: Final = 64 * 1024

# Parts of one transfer (one per CKKS ciphertext): bounds the metadata a peer can declare.
MAX_TRANSFER_PARTS: Final = 1 << 16

# Incomplete uploads the server holds for one member: opening another discards the older one, so
# the bytes a member has in flight never exceed the largest single upload the round expects from it.
UPLOADS_PER_MEMBER: Final = 1

# Upload streams one member may have open at once (a resumed stream may start before the server has
# noticed that the interrupted one died); more are refused before a message is read.
UPLOAD_STREAMS_PER_MEMBER: Final = 2

# Upper bound on one streamed payload (a whole masked vector, CKKS ciphertext set or aggregate).
# 4 GiB: well above a 7B adapter's LoRA update under CKKS, yet bounded so a peer cannot make the
# other side buffer without end.
MAX_PAYLOAD_BYTES: Final = 4 * 1024 * MIB

# How long a PollTask long-poll may be held open by the server before it answers "wait".
MAX_POLL_WAIT_MS: Final = 30_000

# Protocol identifier reported in StatusResponse.protocol_version.
PROTOCOL_VERSION: Final = "securefed.v1"

SESSION_ID_BYTES: Final = 32
