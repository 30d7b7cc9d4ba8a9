"""How a member's records become training examples when they do not fit (``[data]`` of client.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from securefed.config import StrictModel


class DataSettings(StrictModel):
    """Over-long records and packing. The unit of privacy is one record (a whole conversation) unless
    ``pack_text`` is on, when it is one packed block of ``max_seq_len`` tokens."""

    long_records: Literal["truncate", "refuse"] = Field(
        "truncate", description="a record longer than training.max_seq_len tokens: 'truncate' keeps its first "
        "max_seq_len tokens (counted in the log and in `securefed client --check`), 'refuse' stops with the "
        "file and line to fix")
    pack_text: bool = Field(
        False, description="{\"text\"} records only: concatenate them (EOS between) and cut the stream into full "
        "blocks of max_seq_len tokens instead of one padded, truncated example per record. No text is cut off, "
        "but the unit of privacy becomes one block (a record spanning two blocks is protected as a group of two)")
