"""Database URLs: which backend a URL names, its TLS default, and a form safe to print."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .errors import BadSetting
from .redact import REDACTED

PG_SCHEMES = ("postgresql", "postgres")
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})


def redact(url: str) -> str:
    """The URL with its password replaced by <redacted>, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


@dataclass(frozen=True)
class PgTarget:
    """A PostgreSQL URL, checked: what asyncpg gets and what the logs may show."""

    url: str
    ssl: str | None  # passed to asyncpg; None leaves the URL's own sslmode in charge

    @property
    def safe(self) -> str:
        return redact(self.url)


def parse_database_url(url: str) -> PgTarget:
    """Check a `postgresql://` URL. Remote hosts get `sslmode=require` unless the URL says otherwise."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        raise BadSetting(f"the database URL {redact(url)} is malformed ({err})") from None
    if parts.scheme not in PG_SCHEMES:
        raise BadSetting(
            f"the database URL must start with postgresql:// (or be unset for SQLite in the data dir), "
            f"not {parts.scheme + '://' if parts.scheme else redact(url)!r}")
    query = dict(parse_qsl(parts.query))
    # A host may also come from ?host=/path/to/socket; a socket directory is local too.
    host = unquote(hostname or query.get("host", ""))
    local = host in LOCAL_HOSTS or host.startswith("/")
    ssl = None if ("sslmode" in query or local) else "require"
    return PgTarget(url=url, ssl=ssl)


def is_postgres(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in PG_SCHEMES
