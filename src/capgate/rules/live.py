"""The routing rules in force: the config file's, or the ordered list an admin set at
runtime (admin API, CLI, dashboard), stored as one document and followed by every
process and node through `routing_version` (`capgate.live_routing` polls it).

A list is checked as the config file's `rules:` are before it is stored (a bad list is
refused, naming the rule and the field, and nothing changes). Adopting one builds the
gateway's route policies anew and hands them over in one assignment: a request uses the
rule set it was admitted with from start to end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capgate.errors import InvalidRequest
from capgate.rules.language import RuleSet
from capgate.rules.parse import RuleError
from capgate.store.routing_rows import StoredRules

log = logging.getLogger(__name__)

Serves = Callable[[str], bool]
Compile = Callable[[Any, Serves | None], RuleSet]  # parse_rules with the server's timezone
Build = Callable[[RuleSet], tuple[Any, ...]]  # the gateway's route policies for a rule set
Install = Callable[[tuple[Any, ...]], None]


@dataclass(frozen=True, slots=True)
class InForce:
    """The rules a process applies, and where they came from."""

    source: str  # "config" | "runtime"
    rules: list[Any]  # as written (the file's `rules:`, or the list set at runtime)
    compiled: RuleSet
    changed_by: str | None = None
    changed_at: float | None = None
    problem: str | None = None  # runtime rules this version cannot use (the file's apply)

    def to_json(self, config_rules: list[Any]) -> dict[str, Any]:
        return {
            "source": self.source,
            "rules": self.rules,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
            "problem": self.problem,
            "config_rules": config_rules,
        }


def rules_of(document: Any, where: str = "body") -> Any:
    """The list of rules in a document: the list itself, or a mapping with `rules` (a
    config file's section pasted whole); an empty document is no rules."""
    if isinstance(document, dict) and "rules" in document:
        document = document["rules"]
    if document is None:
        return []
    if not isinstance(document, list):
        raise InvalidRequest(f"{where}: a list of rules, or a mapping with `rules:`")
    return document


class LiveRules:
    def __init__(self, config_rules: Any, compile_rules: Compile, build: Build) -> None:
        self.config_rules = list(config_rules or [])
        self._compile = compile_rules
        self._build = build
        self._config = InForce("config", self.config_rules, compile_rules(config_rules, None))
        self._stored: StoredRules | None = None
        self.in_force = self._config
        self.policies = build(self._config.compiled)
        self._install: Install | None = None

    def bind(self, install: Install) -> None:
        """Where adopted policies go (the gateway's), once it is built."""
        self._install = install

    def check(self, rules: Any, serves: Serves | None) -> RuleSet:
        """`rules` checked as the config file's are; InvalidRequest names rule and field."""
        if not isinstance(rules, list):
            raise InvalidRequest("rules: must be a list of rules")
        try:
            return self._compile(rules, serves)
        except RuleError as exc:
            raise InvalidRequest(str(exc)) from None

    def adopt(self, stored: StoredRules | None) -> None:
        """Follow the store's runtime rules (None: the file's); a no-op when unchanged."""
        if stored == self._stored:
            return
        self._stored = stored
        if stored is None:
            in_force = self._config
        else:
            try:
                compiled = self._compile(stored.rules, None)
            except RuleError as exc:  # written by a newer version?
                problem = f"the runtime rules are not used: {exc}"
                log.error("%s", problem)
                in_force = InForce("config", self.config_rules, self._config.compiled,
                                   stored.actor, stored.updated_at, problem)  # fmt: skip
            else:
                in_force = InForce("runtime", stored.rules, compiled,
                                   stored.actor, stored.updated_at)  # fmt: skip
        self.in_force = in_force
        self.policies = self._build(in_force.compiled)
        if self._install is not None:
            self._install(self.policies)
