"""What this version of rose accepts as an event: schema version, kinds and size limits.

The bottom of the event model: every other module of ``rose.events`` (and the
bus's wire format) reads its limits here, and raises :class:`EventError`.
"""

SCHEMA_VERSION = 1
KINDS = ("start", "iteration", "stop")

#: The one size limit of the whole system: the largest event, in bytes of its msgpack
#: encoding, that a learner sends, the broker stores and forwards and decoders accept.
MAX_EVENT_BYTES = 16 * 1024 * 1024
#: JSON spends at most this many bytes on one byte of msgpack: ``b""`` (2 bytes) becomes
#: ``{"__bytes__":""},`` (17), a control character (1) ``\u00XX`` (6), ``False`` (1) ``false,``.
JSON_EXPANSION = 9
#: The longest JSON line of an event within MAX_EVENT_BYTES (event logs, file sinks,
#: spools, replay): derived from the one limit, so nothing a store holds is refused by replay.
MAX_JSON_LINE_BYTES = JSON_EXPANSION * MAX_EVENT_BYTES + 64 * 1024
#: Nesting deeper than this is stored as a Repr; keeps encode and decode bounded.
MAX_DEPTH = 32
#: Repr strings are cut to this many characters.
MAX_REPR_CHARS = 4096
#: Decoders reject events nested deeper than this (encoders stay below MAX_DEPTH + 8),
#: so nothing downstream can hit the recursion limit on hostile input.
MAX_DECODE_DEPTH = 64
#: Decoders reject events of more values than this (containers, keys and scalars):
#: memory for one decoded event stays in the tens of MB, whatever its bytes say.
MAX_DECODE_ITEMS = 1_000_000
#: Inputs up to this size with too few containers to nest deeply skip the bounds scan.
SCAN_FROM_BYTES = 64 * 1024


class EventError(ValueError):
    """An event (or encoded event) that this version of rose cannot accept."""
