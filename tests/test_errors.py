"""The one error tree: Google's errors become ours in the adapters, and the CLI needs to
know only ours (plus missing credentials)."""

from __future__ import annotations

import pytest
import typer
from google.api_core import exceptions as gexc

from ocrpipe import errors
from ocrpipe.cli import Exit
from ocrpipe.cli.common import cloud_errors


@pytest.mark.parametrize(
    ("google", "ours", "push_status"),
    [
        (gexc.PermissionDenied("no"), errors.AccessDenied, 503),  # type: ignore[no-untyped-call]
        (gexc.InvalidArgument("bad"), errors.StorageRejected, 500),  # type: ignore[no-untyped-call]
        (gexc.ServiceUnavailable("later"), errors.StorageUnavailable, 503),  # type: ignore[no-untyped-call]
        (gexc.TooManyRequests("slow down"), errors.StorageUnavailable, 503),  # type: ignore[no-untyped-call]
    ],
)
def test_pubsub_errors_become_ours(
    google: Exception, ours: type[errors.OcrpipeError], push_status: int
) -> None:
    translated = errors.translate_google_error(google, "projects/p/topics/t")
    assert type(translated) is ours
    assert "projects/p/topics/t" in translated.message
    assert errors.push_status_for(translated) == push_status


@pytest.mark.parametrize(
    "exc",
    [
        errors.ObjectMissing("gs://b/o"),
        errors.SubscriptionMissing("projects/p/subscriptions/s does not exist"),
        errors.RetryRefused("x.pdf was rejected as a whole"),
    ],
)
def test_every_project_error_is_in_the_tree_and_ends_the_cli_cleanly(
    exc: errors.OcrpipeError, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(exc, errors.OcrpipeError)
    with pytest.raises(typer.Exit) as ended, cloud_errors():
        raise exc
    assert ended.value.exit_code == Exit.FAILED
    assert exc.message in capsys.readouterr().err.replace("\n", " ")
