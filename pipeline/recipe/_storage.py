"""``search.storage``: the Optuna RDB URLs a recipe may name, checked when the recipe validates
(not after task 0 has trained)."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["STORAGE_SCHEMES", "check_storage_url", "check_tracking_uri"]

STORAGE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
# MLflow's tracking stores: a database, a tracking server, or a local folder (a plain path)
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file", "http", "https",
                    "databricks")


def check_storage_url(url: str) -> str:
    """``url`` if it is ``sqlite:///path`` or a PostgreSQL URL; else ValueError saying why."""
    must = ("must be sqlite:///path, postgresql://[user@]host[:port]/db or "
            "postgresql+psycopg://...")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parses the port: ValueError when it is not a number
    except ValueError as exc:
        raise ValueError(f"{must}, found an unparsable URL ({exc})") from None
    scheme = parts.scheme.lower()
    if "://" not in url or scheme not in STORAGE_SCHEMES:
        raise ValueError(f"{must}, found scheme {scheme or url[:20]!r}")
    if any(c.isspace() or c == "\x00" for c in url):
        raise ValueError(f"{must}, found whitespace or a NUL byte in it")
    if scheme == "sqlite":
        if parts.netloc or parts.path in ("", "/") or parts.path == "/:memory:":
            raise ValueError(f"{must}: sqlite needs a file path after sqlite:/// (several "
                             f"workers share the file), found {url[:80]!r}")
    elif not (parts.netloc or "host=" in parts.query):
        raise ValueError(f"{must}: PostgreSQL needs a host (or ?host=/socket/dir), "
                         f"found {url[:80]!r}")
    return url


def check_tracking_uri(uri: str) -> str:
    """``uri`` if MLflow can track to it: a known scheme, or a plain folder path."""
    if not uri or any(not c.isprintable() for c in uri):
        raise ValueError("must be a non-empty URI or path without control characters")
    scheme = urlsplit(uri).scheme.lower() if "://" in uri or uri.startswith("file:") else ""
    base = scheme.split("+", 1)[0]
    if scheme and base not in TRACKING_SCHEMES:
        raise ValueError(f"must be a path or a URI of scheme {list(TRACKING_SCHEMES)}, found "
                         f"scheme {scheme[:20]!r}")
    if base == "sqlite" and not uri.startswith("sqlite:///"):
        raise ValueError(f"must be sqlite:///path for sqlite, found {uri[:80]!r}")
    return uri
