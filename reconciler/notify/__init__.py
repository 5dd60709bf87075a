"""Notifications: what the reconciler tells people (rejected commits, halts, drift, refusals, stale agents),
delivered to outgoing webhooks from a durable queue. Reads the stages before it; serve drives it."""
