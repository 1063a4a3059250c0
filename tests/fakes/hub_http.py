"""What the Hugging Face and Replicate fakes share: a FakeAPIServer with no machines behind it.

Neither fake backs anything with an sshd: no pool. (The shared handler of
:mod:`tests.fakes` decodes the chunked bodies the hub SDKs stream.)
"""

from __future__ import annotations

from . import FakeAPIServer


class HubFake(FakeAPIServer):
    """A fake API on 127.0.0.1 with no instances behind it; started and stopped like every other fake."""

    def __init__(self, *, api_key: str):
        super().__init__(pool=None, api_key=api_key)
