"""Content negotiation between two media types a route can answer with."""

from __future__ import annotations


def prefers(accept: str | None, media_type: str, over: str) -> bool:
    """Whether the Accept header weighs `media_type` above `over`; a wildcard (`*/*`) weighs
    neither, so a client that names no type gets `over`, the route's default."""
    weights = {media_type: 0.0, over: 0.0}
    for part in (accept or "").split(","):
        named, *parameters = (p.strip() for p in part.split(";"))
        if named.lower() not in weights:
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        weights[named.lower()] = quality
    return weights[media_type] > weights[over]
