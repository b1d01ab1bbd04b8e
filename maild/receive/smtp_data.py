"""Read the content of one SMTP DATA command in the chunks the socket delivers.

aiosmtpd awaits a `readuntil` for every line of a mail (about 900 for a mail of
ordinary size), which made the listener cost as much CPU as a whole bare sink. Here
each read takes everything the connection has buffered, and the end marker is found
with one `find` over what is new.
"""

from __future__ import annotations

import asyncio
import sys

_END = b"\r\n.\r\n"
# The content starts at the beginning of a line, as if after a CRLF. Putting that CRLF
# in front lets one search find the end marker of an empty mail (".\r\n" at once) and
# lets one replace undo the dot-stuffing of the first line as of any other.
_LINE_START = b"\r\n"


async def read_data(reader: asyncio.StreamReader, size_limit: int | None) -> bytes | None:
    """The content up to the end marker, dot-stuffing undone; None if it exceeds size_limit.

    Reads until the end marker even when the content is too big, so the session can
    answer and go on with the next command. Bytes the client sent after the end
    marker (pipelined commands, RFC 2920) are handed back to the reader.
    """
    buffer = bytearray(_LINE_START)
    searched = 0  # the marker cannot start before this offset of `buffer`
    too_big = False
    while True:
        # At most `n` bytes are taken, and a larger n than ever buffered takes them
        # all: then nothing is left in the reader that pipelined bytes could jump ahead of.
        chunk = await reader.read(sys.maxsize)
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        buffer += chunk
        end = buffer.find(_END, searched)
        if end == -1:
            searched = max(len(buffer) - len(_END) + 1, 0)
            # The content is at least `searched` bytes long, the virtual CRLF counted
            # in place of the real one that ends its last line.
            if too_big or (size_limit is not None and searched > size_limit):
                too_big = True
                # Keep only what could still be the start of the end marker.
                del buffer[:searched]
                searched = 0
            continue
        after = end + len(_END)
        if after < len(buffer):
            reader.feed_data(bytes(buffer[after:]))
        if too_big or (size_limit is not None and end > size_limit):
            return None
        # Keep the CRLF that ends the last line: it belongs to the content.
        del buffer[end + len(_LINE_START) :]
        if buffer.find(b"\r\n.") != -1:
            buffer = buffer.replace(b"\r\n.", b"\r\n")
        return bytes(buffer[len(_LINE_START) :])
