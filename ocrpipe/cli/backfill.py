"""`ocrpipe submit gs://BUCKET/PREFIX`: objects already in a bucket enter the pipeline,
copied by GCS (ocrpipe/operations/backfill.py), with the progress and lines of a local
submit."""

from __future__ import annotations

from rich.text import Text

from ocrpipe import naming
from ocrpipe.cli.common import err, out, usage_error
from ocrpipe.operations import backfill, batch_views
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore


def copy_from_buckets(
    store: ObjectStore,
    settings: Settings,
    uris: list[str],
    prefix: str,
    force: bool,
    dry_run: bool,
) -> backfill.BackfillReport:
    """Copy what is under each ``gs://`` URI into the input bucket and say what was done.
    Exit 2 for a source that is not a bucket path or holds nothing."""
    try:
        files = backfill.find(store, uris, prefix)
    except backfill.NotABucketPath as exc:
        usage_error(str(exc))
    except ValueError as exc:
        usage_error(f"Two objects would get the same name: {exc}")
    if not files:
        usage_error(f"Nothing to submit under {', '.join(uris)}")
    bucket = settings.input_bucket
    with batch_views.transfer_progress(err, "copying", [f.size for f in files]) as advance:
        report = backfill.copy(
            store,
            bucket,
            files,
            force=force,
            dry_run=dry_run,
            on_file=lambda item: advance(item.file.size),
        )
    for item in report.copied:
        uri = naming.object_uri(bucket, item.file.name)
        if dry_run:
            out.print(Text(f"would submit {uri} from {item.file.uri} ({item.file.size} bytes)"))
        else:
            out.print(Text(f"submitted {uri} from {item.file.uri} (generation {item.generation})"))
    for item in report.failed:
        err.print(Text(f"{item.file.uri}: not copied: {item.failed}", style="yellow"))
    verb = "would copy" if dry_run else "copied"
    out.print(
        f"{verb} {len(report.copied)} object(s) by GCS, none downloaded;"
        f" {len(report.unchanged)} unchanged (already in the bucket with the same bytes)",
        markup=False,
    )
    return report
