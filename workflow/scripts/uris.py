"""Tracking URIs as they may be shown (standard library only: the Snakefile imports it)."""

import urllib.parse


def redact(uri):
    """The URI as it may be shown: http://user:secret@host -> http://user:***@host (a user
    name without a password may itself be a token: http://***@host)."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{shown}@{host}"))
