"""A scope's response-cache setting (docs/cache.md), pure: what an admin sets and what
the store keeps in the scope's `cache` column as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OWNERS = ("key", "user", "team", "org")  # whose requests may share answers
CHARGES = ("free", "full")  # a hit costs nothing, or what the answer cost when it was made
MAX_TTL_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class CacheSetting:
    """Answers of this scope's requests are kept `ttl_s` seconds and given again to the
    same owner's identical requests (and close paraphrases with `semantic`). `owner`: the scope whose requests share (the key by
    default); `shared`: a cache name; scopes that name the same one share across owners."""

    ttl_s: float
    owner: str = "key"
    shared: str | None = None
    charge: str = "free"
    semantic: bool = False  # also answer a close paraphrase (docs/semantic-cache.md)

    def __post_init__(self) -> None:
        if not 1 <= self.ttl_s <= MAX_TTL_S:
            raise ValueError(f"cache ttl must be between 1 s and 30 days, not {self.ttl_s:g} s")
        if self.owner not in OWNERS:
            raise ValueError(f"cache owner must be one of {', '.join(OWNERS)}, not {self.owner!r}")
        if self.charge not in CHARGES:
            raise ValueError(f"cache charge must be free or full, not {self.charge!r}")
        if self.shared is not None and not 1 <= len(self.shared) <= 100:
            raise ValueError("cache shared: a name of 1 to 100 characters")

    def to_json(self) -> dict[str, Any]:
        return {
            "ttl_s": self.ttl_s,
            "owner": self.owner,
            "shared": self.shared,
            "charge": self.charge,
            "semantic": self.semantic,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheSetting:
        return cls(
            float(data["ttl_s"]), data.get("owner", "key"), data.get("shared"),
            data.get("charge", "free"), bool(data.get("semantic", False)),
        )  # fmt: skip
