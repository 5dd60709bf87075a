"""A real git policy repository made from example-repo/, with reviewers whose keys the test holds.

    repo = PolicyRepo.create(tmp_path)
    repo.git.write("enforcement/web-lockdown.yaml", ...)
    repo.git.commit("tighten", author=DEV, sign=repo.keys["dana"])  # signed by a contributor
    repo.advance_merge("feature", signer="alice")          # signed merge by a reviewer

Used by reconciler, agent and integration tests alike.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .gitrepo import GitRepo, Key, Person, make_key

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"

ALICE = Person("Alice Reviewer", "alice@example.com")
BOB = Person("Bob Reviewer", "bob@example.com")
DEV = Person("Dana Developer", "dana@example.com")
MALLORY = Person("Mallory", "mallory@example.com")  # holds a key, but is no reviewer


@dataclass
class PolicyRepo:
    git: GitRepo
    keys: dict[str, Key]  # "alice" / "bob" (reviewers), "dana" (contributor), "mallory" (nobody)

    @property
    def path(self) -> Path:
        return self.git.path

    @classmethod
    def create(cls, tmp_path: Path, *, min_observation: str | None = None,
               bundle_expiry: str | None = None) -> PolicyRepo:
        """example-repo/ committed as the first commit of `main`, reviewers' keys replaced by real ones."""
        keys = {n: make_key(tmp_path / "keys", n, f"{n}@example.com") for n in ("alice", "bob", "mallory", "dana")}
        path = tmp_path / "policy-repo"
        shutil.copytree(EXAMPLE, path)
        git = GitRepo.init(path)
        text = (path / "palisade.yaml").read_text()
        for name in ("alice", "bob", "dana"):
            text = re.sub(rf"key: ssh-ed25519 \S+ {name}@example.com", f"key: {keys[name].public}", text)
        if min_observation is not None:
            text = re.sub(r"minObservation: \S+", f"minObservation: {min_observation}", text)
        if bundle_expiry is not None:
            text = re.sub(r"bundleExpiry: \S+", f"bundleExpiry: {bundle_expiry}", text)
        (path / "palisade.yaml").write_text(text)
        git.git("add", "-A")
        git.commit("Import the policy repository", author=ALICE)
        return cls(git, keys)

    def edit(self, relpath: str, old: str, new: str) -> None:
        text = self.git.read(relpath)
        if old not in text:
            raise AssertionError(f"{old!r} not in {relpath}")
        self.git.write(relpath, text.replace(old, new, 1))

    def change(self, message: str, edits: list[tuple[str, str, str]], *, signer: str | None = None,
               author: Person = DEV, wait_days: float = 0, author_signs: bool = True) -> str:
        """A feature branch by `author` with `edits`, merged into main (signed by `signer` if given).

        The branch commit is signed with the author's key when the repository has one (Dana's, a
        contributor's: that proves who wrote it); `author_signs=False` leaves it unsigned."""
        branch = f"change-{self.git.head()[:8]}"
        self.git.branch(branch)
        for relpath, old, new in edits:
            self.edit(relpath, old, new)
        own = self.keys.get(author.email.split("@")[0]) if author_signs else None
        self.git.commit(message, author=author, sign=own)
        self.git.checkout("main")
        if wait_days:
            self.git.advance(days=wait_days)
        merger = {"alice": ALICE, "bob": BOB}.get(signer or "", DEV)
        return self.git.merge(branch, author=merger, sign=self.keys[signer] if signer else None)
