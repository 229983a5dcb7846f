"""Name lookups for tests: the image fetch policy resolves every host it is asked to fetch
from, and tests must not depend on (or leak queries to) a real resolver."""

PUBLIC = "93.184.216.34"  # a public address: what "somewhere on the internet" resolves to


class FakeDNS:
    """``await dns(host, port)``: the addresses ``names`` gives ``host``, else ``default``
    (None: the name does not exist)."""

    def __init__(self, names: dict[str, list[str]] | None = None, default: str | None = PUBLIC):
        self.names = dict(names or {})
        self.default = default
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host in self.names:
            return list(self.names[host])
        if self.default is None:
            raise OSError(f"unknown host {host}")
        return [self.default]
