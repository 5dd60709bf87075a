"""The policy repository as typed values: git reading (source), YAML schemas and parsing (schema, loader),
the model, rule templates rendered into TracingPolicies (render, summary), SSH signatures, acceptances,
and the one-line edits `palisade advance` writes (edit). Nothing here judges a change: that is `checks`."""
