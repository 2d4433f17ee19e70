"""``node-engine``: build the node from its settings (`node_engine.startup`), then run it.

Exit status: 0 after SIGTERM/SIGINT, 2 for invalid settings or state directory, 3 when
the cluster refuses the join (bad token 401/403, invalid request 422, ...) or the rejoin
of the stored identity (wrong node secret, node removed by the operator; see
`node_engine.identity.refusal_message`), 1 when the first join cannot reach the cluster.
"""

from __future__ import annotations

import logging
import sys

from node_engine.startup import (
    EXIT_CONFIG,
    EXIT_JOIN_REFUSED,
    NodePlan,
    StartupExit,
    Stopper,
    build,
)

log = logging.getLogger("node_engine")

__all__ = ["EXIT_CONFIG", "EXIT_JOIN_REFUSED", "main", "run"]


def run(plan: NodePlan, stopper: Stopper) -> int:
    """Run the built engine until a stop request; its shutdown happens inside
    `Engine.run` (tasks keep running, offline presence, outbox kept). Status 0."""
    stopper.engine = plan.engine
    if stopper.stop.is_set():  # a signal between the join and now
        return 0
    log.info("%s", plan.describe())
    plan.engine.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``node-engine`` console script: build, then run."""
    stopper = Stopper()
    try:
        plan = build(argv, stopper)
    except StartupExit as exc:
        if exc.message:
            print(exc.message, file=sys.stderr)
        return exc.code
    return run(plan, stopper)


if __name__ == "__main__":
    sys.exit(main())
