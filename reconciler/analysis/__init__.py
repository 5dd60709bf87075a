"""Answers from git plus the state directory, for auditors and operators: who allowed what (audit), what a
policy would hit (impact), whether it is ready to enforce (readiness), policies drafted from events (generate)."""
