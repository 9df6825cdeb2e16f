"""The one redaction of secrets: every copy of the config (config.json, the store's meta, the
reports) and every place the target URL is shown (summary, events, console, metrics label)
goes through here, so that a run directory and ``/metrics`` hold no secret.

Secret: webhook URLs past their host and their header values, the alert command's arguments,
``[target.http]`` and ``[otel]`` header values, and the target URL's and the OTLP endpoint's
userinfo and query values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_config", "redact_target", "redact_url"]

REDACTED = "<redacted>"


def _netloc(parts: SplitResult) -> str:
    """host[:port] with any userinfo replaced (never the password, nor the user name)."""
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # a port that is not a number: show nothing of it
        host, port = parts.hostname or "", None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    hostport = host if port is None else f"{host}:{port}"
    return f"{REDACTED}@{hostport}" if "@" in parts.netloc else hostport


def redact_url(url: str, *, keep_path: bool = True) -> str:
    """``url`` without credentials: userinfo and query values (and the fragment) redacted; the
    path too unless ``keep_path`` (a webhook's path is its token: only scheme and host stay)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.netloc:
        return REDACTED  # not a URL we can take apart: show nothing of it
    netloc = _netloc(parts)
    if not keep_path:
        rest = parts.path not in ("", "/") or parts.query or parts.fragment
        return urlunsplit((parts.scheme, netloc, f"/{REDACTED}" if rest else parts.path, "", ""))
    query = "&".join(
        f"{quote(k, safe='')}={REDACTED}" for k, _ in parse_qsl(parts.query, keep_blank_values=True)
    )
    if parts.query and not query:  # no key=value pairs (``?token``): the whole query goes
        query = REDACTED
    fragment = REDACTED if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_target(name: str) -> str:
    """A target's display name: a URL without its credentials; ``module:attr`` as it is."""
    return redact_url(name) if "://" in name else name


def _redact_values(headers: object) -> object:
    if isinstance(headers, Mapping):
        return {str(k): REDACTED for k in headers}
    return headers if headers in (None, {}) else REDACTED


def redact_config(dump: object) -> Any:
    """A copy of a config dump (``Config.model_dump(mode="json")``, or one read back from a run
    directory that may predate redaction) with every secret replaced by ``<redacted>``."""
    if not isinstance(dump, Mapping):
        return dump
    out: dict[str, Any] = dict(dump)
    if isinstance(out.get("config"), Mapping):  # config.json wraps the dump
        out["config"] = redact_config(out["config"])
        return out
    alerts = out.get("alerts")
    if isinstance(alerts, Mapping):
        alerts = dict(alerts)
        hooks = alerts.get("webhooks")
        if isinstance(hooks, list | tuple):
            alerts["webhooks"] = [_redact_webhook(h) for h in hooks]
        command = alerts.get("command")
        if isinstance(command, list | tuple) and command:
            # the program stays (what runs), its arguments may carry tokens
            alerts["command"] = [str(command[0])] + [REDACTED] * (len(command) - 1)
        elif command is not None:
            alerts["command"] = REDACTED
        out["alerts"] = alerts
    target = out.get("target")
    if isinstance(target, Mapping) and isinstance(target.get("http"), Mapping):
        http = dict(target["http"])
        if isinstance(http.get("url"), str):
            http["url"] = redact_url(http["url"])
        if "headers" in http:
            http["headers"] = _redact_values(http["headers"])
        out["target"] = {**target, "http": http}
    otel = out.get("otel")
    if isinstance(otel, Mapping):
        otel = dict(otel)
        if isinstance(otel.get("endpoint"), str):
            otel["endpoint"] = redact_url(otel["endpoint"])
        if "headers" in otel:
            otel["headers"] = _redact_values(otel["headers"])
        out["otel"] = otel
    return out


def _redact_webhook(hook: object) -> object:
    if not isinstance(hook, Mapping):
        return REDACTED
    hook = dict(hook)
    if "url" in hook:
        hook["url"] = redact_url(str(hook["url"]), keep_path=False)
    if "headers" in hook:
        hook["headers"] = _redact_values(hook["headers"])
    return hook
