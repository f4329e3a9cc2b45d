"""Turn a QMP byte stream into JSON values exactly as QEMU's JSON streamer does, fast and in
bounded memory.

QEMU reads QMP with three layers (``qobject/json-lexer.c``, ``json-streamer.c``,
``json-parser.c``): a byte-driven lexer with error recovery, a streamer that cuts the token
stream into top-level messages by counting brackets and enforces limits, and a recursive
descent parser with its own error texts.  The number, order and text of the error replies
for broken input are part of QEMU's observable behaviour, so all three are reproduced:
single-quoted strings are accepted, duplicate keys rejected, integers beyond 64 bits become
floats, and so on.  ``tests/qmp/reference_stream.py`` keeps the literal byte-at-a-time port
as the oracle this module is tested against; this one differs only in cost:

- **Runs, not bytes.** Whole tokens (and whole runs of separators, openers, string bytes,
  digits or junk in error recovery) are matched by compiled regular expressions; the
  lexer's state table is consulted byte by byte only at the edges of a read.  The run
  classes are derived from the state table itself, so they cannot disagree with it.
- **Bounded memory.** A message in progress is held as its token text (punctuation and
  strings as they are, numbers and keywords followed by one space), not as token objects:
  at most ``max_message_size`` plus one byte per token.  ``max_tokens`` caps the tokens
  of a message (QEMU's "JSON token count limit exceeded"), which also bounds the parse.
- **No recursion.** The parser keeps its own stack, so the 1,024 levels of nesting QEMU
  allows are parsed, not a ``RecursionError``.
- **Incremental.** :meth:`JSONStreamParser.next_message` lexes at most ``SLICE`` bytes per
  call and stops at the first complete message, so a server answers (and applies
  backpressure) message by message and bounds the work it does for one client at a time.

Its pieces: :mod:`.lexer` (QEMU's table as data), :mod:`.runs` (what is matched in one
step, derived from the table), :mod:`.streamer` (the streamer, its limits and its memory
of repeated requests) and :mod:`.parser`.
"""

from vmstats.qmp.jsonstream.streamer import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_TOKENS,
    MAX_NESTING,
    MAX_TOKEN_COUNT,
    MAX_TOKEN_SIZE,
    JSONStreamParser,
    Message,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_TOKENS",
    "MAX_NESTING",
    "MAX_TOKEN_COUNT",
    "MAX_TOKEN_SIZE",
    "JSONStreamParser",
    "Message",
]
