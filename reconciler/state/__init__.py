"""The reconciler's state directory: its layout (statedir), the bundle store and index (store), the
ledger of every commit and publish (ledger), and the agents' heartbeats (fleet)."""
