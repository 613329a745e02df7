"""Exceptions shared by both codec implementations, so callers catch one class whichever runs."""


class CodecError(ValueError):
    """A record body passed its checksum but does not decode (a format or encoder bug)."""


class RecordTooLarge(ValueError):
    """A log entry that would make its batch's record larger than the format allows (64 MiB);
    the encoder leaves the batch as it was before the entry."""
