"""Helpers shared by tests: real git repositories, real SSH keys (see `gitrepo`)."""
