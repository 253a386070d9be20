"""Messages a client can read carry no internal addresses, absolute paths or file hashes.

Errors from the transports (gRPC's "failed to connect to ipv4:10.0.3.7:50053 ...") and from
libraries reach job records and CLIs; `redact` replaces what would tell an outsider about the
deployment with placeholders. The full message stays in the server's log.
"""

from __future__ import annotations

import re

_PATTERNS = (
    # ipv4:1.2.3.4:50051, 10.0.0.7, [::1]:50051, ipv6:[fe80::1]:80, unix:/run/x.sock
    (re.compile(r"\b(?:ipv[46]:)?\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<address>"),
    # an IPv6 literal has at least two colons: "[::1]:50051", never a list index like "choices[1]"
    (re.compile(r"(?:ipv6:)?\[[0-9A-Fa-f.%]*:[0-9A-Fa-f.%]*:[0-9A-Za-z:.%]*\](?::\d+)?"), "<address>"),
    (re.compile(r"\bunix(?:-abstract)?:[^\s,;)]+"), "<address>"),
    (re.compile(r"\b(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:internal|local|svc|cluster\.local)):\d+\b"),
     "<address>"),
    # file:///x/y and /x/y/z (at least two components), not URL paths after a host
    (re.compile(r"file://[^\s'\"]+"), "<path>"),
    (re.compile(r"(?<![\w.:/~-])/(?:[\w.@+-]+/)+[\w.@+-]*"), "<path>"),
    # sha1 / sha256 hex digests
    (re.compile(r"\b[0-9a-f]{64}\b|\b[0-9a-f]{40}\b"), "<hash>"),
)


def redact(message: str) -> str:
    for pattern, placeholder in _PATTERNS:
        message = pattern.sub(placeholder, message)
    return message
