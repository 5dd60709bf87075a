"""The wire contract: what the reconciler publishes and an agent reads, and nothing else.

- `bundle`: the signed bundle and index, their canonical JSON and verification;
- `strict`: strict JSON reading (no duplicate keys, floats or oversized integers) and the per-member
  readers every wire document is parsed with, and the wire's time form;
- `values`: the ladder `State`, the `Scope` of an assignment and the one rule (`effective`) that
  picks the policy a node runs;
- `keys`: reading the pinned public keys (the signing side stays in `reconciler.keys`);
- `heartbeat`: the typed heartbeat an agent sends, its strict parser and its encoder;
- `errors`: the base of every deliberate error, `VerificationError`, and the heartbeat's failure kinds.

The agent imports this package and no reconciler module (tests/wire/test_contract.py checks it);
it depends on the standard library and PyNaCl only: no git, no HTTP, no YAML.
"""
