"""Judging a commit: findings per file (validate, semantics, tpcheck), the enforcement ladder and its
signed approvals through history (ladder, history, tightening), and what a change does (plan, relaxing)."""
