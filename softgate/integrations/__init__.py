"""Thin adapters carrying softgate gates onto TRL and verl; imported lazily."""
