"""A run's block design: when the participant gets feedback, silence, or the neutral clip.

Neurofeedback runs alternate conditions (OpenNFT calls them baseline and
regulation blocks), so that feedback periods can be compared with periods
without it. ``b2m session --protocol BLOCKS.tsv`` takes a BIDS-like table,
the same for every run::

    onset   duration    condition
    0       30          silence
    30      60          feedback
    90      30          neutral

``onset`` and ``duration`` are seconds from the start of the run's first
volume. ``condition`` is one of:

- ``feedback``: the music follows the decoded embedding (or, in a sham
  session, the source session's music), as without a protocol;
- ``silence``: the music fades out on the next bar and stays off;
- ``neutral``: the library's neutral clip (the most typical one) plays,
  whatever is decoded: music without feedback.

Time not covered by a block is ``feedback``. The decision after volume ``i``
falls at ``(i + 1) * TR`` into the run, and the block holding that moment
applies. Decoding and the policy go on in every block, so the record keeps
what feedback would have played.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .tables import read_table

__all__ = ["CONDITIONS", "Block", "Protocol", "read_protocol"]

CONDITIONS = ("feedback", "silence", "neutral")
COLUMNS = ("onset", "duration", "condition")


@dataclass(frozen=True)
class Block:
    """One block: ``onset_s`` and ``duration_s`` in seconds from the run's start, and its condition."""

    onset_s: float
    duration_s: float
    condition: str


@dataclass(frozen=True)
class Protocol:
    """The blocks of every run, sorted by onset and not overlapping."""

    blocks: tuple[Block, ...]
    source: str = ""

    def condition_at(self, t_s: float) -> str:
        """The condition at ``t_s`` seconds into a run (``feedback`` outside every block)."""
        for b in self.blocks:
            if b.onset_s <= t_s < b.onset_s + b.duration_s:
                return b.condition
        return "feedback"

    def describe(self, limit: int | None = None) -> str:
        """The blocks in words, e.g. ``silence 0-30 s, feedback 30-90 s`` (the first ``limit``, then ``...``)."""
        shown = self.blocks[:limit] if limit else self.blocks
        return (", ".join(f"{b.condition} {b.onset_s:g}-{b.onset_s + b.duration_s:g} s" for b in shown)
                + (" ..." if len(shown) < len(self.blocks) else ""))

    def to_dict(self) -> dict:
        return {"source": self.source, "blocks": [asdict(b) for b in self.blocks]}

    @classmethod
    def of_session(cls, info: dict) -> "Protocol | None":
        """The block design a session's ``session_config.json`` records, or None (a session without one)."""
        return cls.from_dict(info["protocol"]) if info.get("protocol") else None

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        return cls(tuple(Block(float(b["onset_s"]), float(b["duration_s"]), str(b["condition"]))
                         for b in d["blocks"]), d.get("source", ""))


def read_protocol(path) -> Protocol:
    """Read a block table (see the module doc).

    Raises
    ------
    ValueError
        Naming the file, the line and the column at fault, and what to write.
    """
    blocks = []
    for line, row in read_table(path, "--protocol", COLUMNS):
        values = {}
        for name in ("onset", "duration"):
            text = row[name]
            try:
                values[name] = float(text)
            except ValueError:
                raise ValueError(f"{path}, line {line}, column {name}: {text!r} is not a number of seconds") from None
            if not (values[name] >= 0 and values[name] < float("inf")):
                raise ValueError(f"{path}, line {line}, column {name}: {text}; give seconds >= 0")
        condition = row["condition"]
        if condition not in CONDITIONS:
            raise ValueError(f"{path}, line {line}, column condition: {condition!r}; write one of "
                             f"{', '.join(CONDITIONS)}")
        if values["duration"] == 0:
            raise ValueError(f"{path}, line {line}, column duration: 0; a block must last")
        blocks.append((line, Block(values["onset"], values["duration"], condition)))
    if not blocks:
        raise ValueError(f"{path}: no blocks; write one row per block under the header")
    blocks.sort(key=lambda lb: lb[1].onset_s)
    for (_, a), (line, b) in zip(blocks, blocks[1:]):
        if b.onset_s < a.onset_s + a.duration_s:
            raise ValueError(f"{path}, line {line}: the block at {b.onset_s:g} s begins before the one at "
                             f"{a.onset_s:g} s ends ({a.onset_s + a.duration_s:g} s); blocks must not overlap")
    return Protocol(tuple(b for _, b in blocks), os.path.abspath(path))
