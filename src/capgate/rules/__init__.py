"""Routing rules (docs/routing.md): `rules:` in the config file (or set at runtime),
evaluated once per request on what capgate already knows of it, before a target is picked.

- `language.py`: the rule language: rules, conditions, actions, first match (pure);
- `parse.py`: `rules:` read and checked at load, each mistake named (pure);
- `signals.py`: what a rule can look at, computed once per request (pure);
- `budget.py`: what is left of a scope's limits, read in the background (a hint);
- `policy.py`: the step the gateway calls: signals, budgets, the first rule that holds;
- `live.py`: the rules in force, the file's or a list an owner set at runtime.
"""
