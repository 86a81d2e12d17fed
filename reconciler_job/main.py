"""The reconciler as a Cloud Run job (terraform/reconciler.tf runs it on a schedule).

Run as ``python -m reconciler_job.main [--prefix P] [--lost-after SECONDS] [--dry-run]``
(the worker's image: it is the whole ocrpipe distribution). This module only reads its
arguments and settings, builds the real clients, and calls
:func:`ocrpipe.splitter.reconcile.reconcile`; the summary goes to Cloud Logging as one JSON
line, and one WARNING line per document left for the next run (a split holding it, an input
that cannot be read). Exit 0 when the run completed, whatever it found: a document left for
the next run is normal, and a failed execution would be retried at once (max_retries);
trouble with GCS or Pub/Sub raises, which fails the execution; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ocrpipe.logs import configure_logging
from ocrpipe.pubsub import PubSubPublisher
from ocrpipe.settings import Settings
from ocrpipe.splitter.reconcile import Policy, reconcile
from ocrpipe.storage import GcsStore

logger = logging.getLogger("reconciler_job")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reconciler_job", description=__doc__)
    parser.add_argument("--prefix", default="", help="only inputs under this prefix")
    parser.add_argument(
        "--lost-after",
        type=float,
        default=None,
        help="seconds after which a message is presumed lost (default: the retentions)",
    )
    parser.add_argument("--dry-run", action="store_true", help="change nothing")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, service="reconciler_job")
    policy = Policy.default()
    if args.lost_after is not None:
        policy = Policy(args.lost_after, args.lost_after)
    store = GcsStore.connect(settings.project, settings.storage_emulator_host)
    publisher = PubSubPublisher.connect(settings.project, settings.pubsub_emulator_host)
    report = reconcile(
        store, publisher, settings, prefix=args.prefix, policy=policy, dry_run=args.dry_run
    )
    logger.info(
        "reconciled %d documents: %d put back, %d page messages published again, %d pages"
        " rendered again, %d images refreshed, %d inputs split again, %d rejections"
        " announced, %d left for the next run%s",
        report.documents,
        len(report.repairs),
        report.requeued_pages,
        report.rendered,
        report.refreshed,
        len(report.split),
        len(report.announced),
        len(report.skipped),
        " (dry run)" if args.dry_run else "",
    )
    for skipped in report.skipped:
        logger.warning("left for the next run: %s: %s", skipped.name, skipped.why)
    return 0


if __name__ == "__main__":
    sys.exit(main())
