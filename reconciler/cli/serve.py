"""`palisade serve`: reconcile continuously and serve bundles, the index, status and metrics over HTTP.

A local repository is watched for ref changes (and polled as a safety net); a
URL is fetched every --poll-interval, and at once when a push webhook
(--hooks FILE, reconciler/serve/hooks.py) reports a push on the tracked
branch. The API listens on loopback unless told
otherwise: put a TLS-terminating proxy in front of it to expose it.

One server leads a state directory (it holds the lock). With --leader-elect a
server that finds the lock held stands by instead of failing: it serves the
index, bundles, objects, status and the fleet (heartbeats too) and takes over
within a moment of the leader's death, continuing with the next version.

Exit codes: 0 stopped by SIGTERM/SIGINT, 2 usage, key, state, hooks or notify file, or listen error
(also the state held by another reconciler without --leader-elect, and a
standby that could not take over).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from reconciler.errors import PalisadeError, StateError, UsageError

from .reconcile import add_reconciler_arguments

DEFAULT_LISTEN = "127.0.0.1:8740"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="reconcile continuously and serve the bundle store over HTTP",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_reconciler_arguments(p)
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address of the HTTP API (default: {DEFAULT_LISTEN}; port 0 picks a free one)")
    p.add_argument("--poll-interval", default="30s", metavar="DURATION",
                   help="how often to fetch a remote repository, and to re-check a watched local one (default: 30s)")
    p.add_argument("--agent-timeout", default="30s", metavar="DURATION",
                   help="an agent silent this long counts as not reporting in rollout gates (default: 30s)")
    p.add_argument("--notify", metavar="FILE",
                   help="outgoing notifications (kind: Notifications; webhook URLs in files it names): rejected "
                        "commits, rollout halts and rollbacks, unhealed drift, refused policies, stale agents")
    p.add_argument("--leader-elect", "--standby", dest="leader_elect", action="store_true",
                   help="if another server holds the state directory, stand by (serve reads) and take over when "
                        "it dies, instead of exiting 2")
    p.add_argument("--hooks", metavar="FILE",
                   help="push webhook receivers (kind: Receivers; secrets in files it names): POST "
                        "/v1/hooks/NAME with a verified push on the tracked branch fetches and reconciles at once")
    p.add_argument("--token-file", metavar="FILE", type=Path,
                   help="a token (one line) the console and the read API require as `Authorization: Bearer` (or, "
                        "in a browser, once as /ui/?token=...); needed to listen beyond loopback. Agents' "
                        "endpoints (index, bundles, objects, heartbeats) stay open")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.keys import load_signing_key
    from reconciler.metrics import Metrics
    from reconciler.publish.reconcile import Reconciler
    from reconciler.repository.model import parse_duration
    from reconciler.serve.listen import parse_listen
    from reconciler.serve.listen import run as run_server
    from reconciler.serve.publication import Publication
    from reconciler.serve.server import create_app
    from reconciler.serve.service import ReconcileLoop, Role, Standby
    from reconciler.serve.watch import Changes, RefWatcher, local_git_dir
    from reconciler.state.statedir import StateDir

    try:
        poll = parse_duration(args.poll_interval).total_seconds()
    except ValueError as e:
        raise UsageError(f"--poll-interval: {e}") from None
    if poll < 1:
        raise UsageError(f"--poll-interval {args.poll_interval}: must be at least 1s")
    try:
        agent_timeout = parse_duration(args.agent_timeout)
    except ValueError as e:
        raise UsageError(f"--agent-timeout: {e}") from None
    notify = None
    if args.notify is not None:  # read once, before the state is taken: a bad file is exit 2 with its reason
        from pathlib import Path

        from reconciler.notify.config import load as load_notify

        notify = load_notify(Path(args.notify))
    host, port = parse_listen(args.listen)
    from reconciler.serve.auth import require_token

    token = require_token(host, args.token_file)  # beyond loopback without one: exit 2 before anything starts
    _logging(args.verbose)
    hooks = None
    if args.hooks is not None:  # read once, before the state is taken: a bad file is exit 2 with its reason
        from pathlib import Path

        from reconciler.serve.hooks import Webhooks, load_hooks

        hooks = Webhooks(load_hooks(Path(args.hooks)), args.branch)
    key = load_signing_key(args.key)

    metrics = Metrics()
    state = StateDir(args.state)
    publication = Publication(state.store.root)
    changes = Changes()
    notifier = None
    if notify is not None:
        from reconciler.notify.notifier import Notifier

        notifier = Notifier(notify, state, stale_after=agent_timeout, registry=metrics.registry)

    def reconciler() -> Reconciler:
        rec = Reconciler(args.repo, state, key, branch=args.branch)
        rec.rollouts.stale_after = agent_timeout
        return rec

    standby = Standby(state.view, branch=args.branch, source=args.repo) if args.leader_elect else None
    loop = ReconcileLoop(
        reconciler,
        publication=publication, metrics=metrics, changes=changes, poll_interval=poll, standby=standby,
        notifier=notifier,
    )
    app = create_app(state.store.root, metrics=metrics, status=loop.status, publication=publication, state=state,
                     hooks=hooks, on_push=changes.notify, leading=lambda: loop.role is not Role.STANDBY,
                     source=args.repo, branch=args.branch, token=token)

    git_dir = local_git_dir(args.repo)
    watcher = RefWatcher(git_dir, changes) if git_dir is not None else None
    loop.start()  # opens the state (takes its lock, or stands by) before anything listens
    try:
        if watcher is not None:
            watcher.start()

        def listening(url: str) -> None:
            how = f"watching {git_dir}" if git_dir is not None else f"polling every {args.poll_interval}"
            role = "" if not args.leader_elect else "; standing by" if loop.role is Role.STANDBY else "; leading"
            # the "listening on" line comes last: whoever waits for it (a supervisor, a test) has the rest
            if hooks is not None:
                names = ", ".join(f"{url}/v1/hooks/{r.name} ({r.kind})" for r in hooks.config.receivers)
                print(f"palisade serve: webhooks at {names}", file=sys.stderr, flush=True)
            login = "?token=<the token in --token-file>" if token is not None else ""
            print(f"palisade serve: console at {url}/ui/{login}", file=sys.stderr, flush=True)
            print(f"palisade serve: listening on {url} ({args.repo} branch {args.branch}, {how}{role})",
                  file=sys.stderr, flush=True)

        run_server(app, host, port, on_listening=listening, on_exit=changes.notify)
    finally:
        if watcher is not None:
            watcher.stop()
        loop.stop()
    if loop.failure is not None:  # a standby that could not take over stopped the server
        if isinstance(loop.failure, PalisadeError):
            raise loop.failure
        raise StateError(f"cannot take over {args.state}: {loop.failure}") from loop.failure
    return 0


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn's start/stop chatter is not news; its warnings and errors are.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
