"""One reconcile pass: a validated commit rendered, its kernel objects built (objects), signed into a
bundle and published (reconcile)."""
