"""SHA-1 for ferry's own names and checksums (control sockets, record keys, rule hashes), never for security.

``hashlib`` loads OpenSSL on import (~2.5 ms here, on every command); CPython's own ``_sha1`` gives the
same digest without it. Where a build lacks ``_sha1``, hashlib's is used.
"""

from __future__ import annotations

try:
    from _sha1 import sha1 as _impl
except ImportError:  # pragma: no cover - a CPython built without its own hashes
    from hashlib import sha1 as _impl


def sha1(data: bytes):
    """A SHA-1 hash object of ``data`` (``.hexdigest()``, ``.digest()``), as ``hashlib.sha1(data)``."""
    return _impl(data)
