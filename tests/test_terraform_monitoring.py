"""Alerts, log-based metrics and the dashboard (terraform/monitoring.tf), checked offline.

Nothing here talks to Cloud Monitoring. Instead the filters are resolved the way terraform
would (``${local...}``, ``${google_x.y.name}``, topology.json) and evaluated by a small
matcher for the subset of the Logging / Monitoring filter languages monitoring.tf uses:
terms joined by ``AND``, each ``path = "v"``, ``path =~ "regex"`` or
``path = one_of("a", "b")``. A filter outside that subset fails the test rather than
passing unchecked.

The log-based metrics are matched against lines the worker really prints: the worker app
runs a page through the project's own logger (ocrpipe.logs.JsonFormatter), each line is
turned into the LogEntry Cloud Run makes of it, and the metric's filter must select exactly
the lines an operator expects to count.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from ocr_worker.app import create_app
from ocrpipe import naming
from ocrpipe.logs import JsonFormatter
from ocrpipe.naming import DocumentRef
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pushes import WORKER_SETTINGS, push_envelope, ready_document
from ocrpipe.topology import TOPOLOGY_FILE
from tests.fakes import ScriptedOcrServer, completion, echo_image
from tests.terraform import TERRAFORM, load_terraform

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
TOPOLOGY = json.loads(TOPOLOGY_FILE.read_text(encoding="utf-8"))

# Google's own metric types the policies and the dashboard may use.
GOOGLE_METRICS = {
    "pubsub.googleapis.com/subscription/num_undelivered_messages",
    "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
    "run.googleapis.com/request_count",
    "run.googleapis.com/container/instance_count",
    "run.googleapis.com/container/startup_latencies",
}
USER_METRIC = "logging.googleapis.com/user/"


# --- terraform, parsed and resolved --------------------------------------------------------


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return load_terraform()


def resolve(text: str, tf: dict[str, Any]) -> str:
    """Substitute what terraform knows at plan time; anything else is a KeyError."""

    def one(match: re.Match[str]) -> str:
        expr = match.group(1)
        if found := re.fullmatch(r"local\.topology\.(\w+)", expr):
            return str(TOPOLOGY[found.group(1)])
        if found := re.fullmatch(r"local\.(\w+)", expr):
            return resolve(tf["locals"][found.group(1)], tf)
        if found := re.fullmatch(r"(google_\w+)\.(\w+)\.name", expr):
            return resolve(tf["resource"][found.group(1)][found.group(2)]["name"], tf)
        raise KeyError(expr)

    while "${" in text:
        text = re.sub(r"\$\{([^${}]+)\}", one, text)
    return text


def policy(tf: dict[str, Any], name: str) -> dict[str, Any]:
    body: dict[str, Any] = tf["resource"]["google_monitoring_alert_policy"][name]
    return body


def threshold(tf: dict[str, Any], name: str) -> dict[str, Any]:
    (condition,) = policy(tf, name)["conditions"]
    body: dict[str, Any] = condition["condition_threshold"][0]
    return body


def variable_default(tf: dict[str, Any], name: str, field: str) -> str:
    """The ``optional(type, default)`` default of one field of an object variable."""
    type_expr = tf["variable"][name]["type"]
    found = re.search(rf"\b{field}\s*=\s*optional\(\w+,\s*([^)]+)\)", type_expr)
    assert found, (name, field, type_expr)
    return found.group(1).strip('"')


# --- a matcher for the filter subset ------------------------------------------------------

TERM = re.compile(
    r'(?P<path>[\w.]+)\s*(?P<op>=~|=)\s*(?P<value>"(?:[^"\\]|\\.)*"|one_of\((?P<any>[^)]*)\))'
)


def _lookup(entry: dict[str, Any], path: str) -> Any:
    value: Any = entry
    for part in path.replace(".label.", ".labels.").split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def matches(filter_text: str, entry: dict[str, Any]) -> bool:
    for term in filter_text.split(" AND "):
        found = TERM.fullmatch(term.strip())
        assert found, f"filter term outside the tested subset: {term!r}"
        actual = _lookup(entry, found.group("path"))
        if found.group("any") is not None:
            allowed = [json.loads(v) for v in re.findall(r'"(?:[^"\\]|\\.)*"', found["any"])]
            ok = actual in allowed
        elif found.group("op") == "=~":
            ok = actual is not None and bool(re.search(json.loads(found["value"]), str(actual)))
        else:
            ok = actual is not None and str(actual) == json.loads(found["value"])
        if not ok:
            return False
    return True


def extract(extractor: str, entry: dict[str, Any]) -> Any:
    found = re.fullmatch(r"EXTRACT\(([\w.]+)\)", extractor)
    assert found, extractor
    return _lookup(entry, found.group(1))


def series(resource: str, metric: str, **labels: str) -> dict[str, Any]:
    """A Cloud Monitoring time series' identity, for matching policy filters."""
    resource_labels = {k: v for k, v in labels.items() if k in ("subscription_id", "service_name")}
    metric_labels = {k: v for k, v in labels.items() if k not in resource_labels}
    return {
        "resource": {"type": resource, "labels": resource_labels},
        "metric": {"type": metric, "labels": metric_labels},
    }


# --- real worker log lines ----------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def cloud_run_entry(line: str, service: str) -> dict[str, Any]:
    """The LogEntry Cloud Run's logging agent makes of one JSON line on stdout."""
    payload = json.loads(line)
    return {
        "resource": {"type": "cloud_run_revision", "labels": {"service_name": service}},
        "severity": payload.pop("severity"),
        "timestamp": payload.pop("time"),
        "labels": payload.pop("logging.googleapis.com/labels", {}),
        "trace": payload.pop("logging.googleapis.com/trace", None),
        "jsonPayload": payload,
    }


def worker_entries(
    tf: dict[str, Any], server: ScriptedOcrServer, pushes: list[int], pages: int
) -> tuple[MemoryStore, DocumentRef, list[dict[str, Any]]]:
    """Push the given pages (1-based, repeats are duplicate deliveries) through the worker."""
    store = MemoryStore()
    lines = Lines()
    with TestClient(
        create_app(WORKER_SETTINGS, store=store, ocr=server.client(), publisher=MemoryPublisher())
    ) as client:
        root = logging.getLogger()
        root.addHandler(lines)
        try:
            doc, messages = ready_document(store, pages)
            for page in pushes:
                assert client.post("/", json=push_envelope(messages[page - 1])).status_code == 204
        finally:
            root.removeHandler(lines)
    service = resolve(tf["locals"]["worker_service_name"], tf)
    return store, doc, [cloud_run_entry(line, service) for line in lines.lines]


def log_metric(tf: dict[str, Any], name: str) -> dict[str, Any]:
    body: dict[str, Any] = tf["resource"]["google_logging_metric"][name]
    return body


# --- tests: log-based metrics -------------------------------------------------------------


def test_pages_done_counts_each_written_page_once_and_latency_reads_its_duration(
    tf: dict[str, Any],
) -> None:
    # Page 1 twice (a duplicate delivery writes nothing), then page 2.
    store, doc, entries = worker_entries(
        tf, ScriptedOcrServer([echo_image]), pushes=[1, 1, 2], pages=2
    )
    assert store.stat("out", naming.document_markdown_name(doc)) is not None

    done = resolve(log_metric(tf, "pages_done")["filter"], tf)
    counted = [e for e in entries if matches(done, e)]
    assert len(counted) == 2, [e["jsonPayload"]["message"] for e in entries]
    assert {e["labels"]["page"] for e in counted} == {"1", "2"}

    latency = log_metric(tf, "page_latency")
    assert resolve(latency["filter"], tf) == done
    assert latency["metric_descriptor"][0]["value_type"] == "DISTRIBUTION"
    durations = [extract(latency["value_extractor"], e) for e in counted]
    assert all(isinstance(d, int) and d >= 0 for d in durations), durations

    failed = resolve(log_metric(tf, "pages_failed")["filter"], tf)
    assert not [e for e in entries if matches(failed, e)]


def test_pages_failed_counts_a_page_failed_for_good_with_its_error_record_reason(
    tf: dict[str, Any],
) -> None:
    looping = ScriptedOcrServer([completion("la " * 50, "repetition")])
    store, doc, entries = worker_entries(tf, looping, pushes=[1, 1], pages=1)
    record = json.loads(store.read("out", naming.page_error_name(doc, 1)))

    metric = log_metric(tf, "pages_failed")
    failed = resolve(metric["filter"], tf)
    counted = [e for e in entries if matches(failed, e)]
    assert len(counted) == 1, [e["jsonPayload"]["message"] for e in entries]
    labels = {key: extract(expr, counted[0]) for key, expr in metric["label_extractors"].items()}
    assert labels == {"reason": record["reason"]} == {"reason": "ocr_repetition_loop"}
    declared = [label["key"] for label in metric["metric_descriptor"][0]["labels"]]
    assert declared == ["reason"]

    done = resolve(log_metric(tf, "pages_done")["filter"], tf)
    assert not [e for e in entries if matches(done, e)]


def test_log_metrics_ignore_other_services(tf: dict[str, Any]) -> None:
    _, _, entries = worker_entries(tf, ScriptedOcrServer([echo_image]), pushes=[1], pages=1)
    gpu = resolve(tf["locals"]["gpu_service_name"], tf)
    elsewhere = [
        {**e, "resource": {**e["resource"], "labels": {"service_name": gpu}}} for e in entries
    ]
    for name in ("pages_done", "pages_failed", "page_latency"):
        assert not [e for e in elsewhere if matches(resolve(log_metric(tf, name)["filter"], tf), e)]


# --- tests: alert policies ----------------------------------------------------------------

DEAD_LETTER = TOPOLOGY["dead_letter_subscription"]
PAGES = TOPOLOGY["pages_push_subscription"]
SUB = "pubsub_subscription"
RUN = "cloud_run_revision"
UNDELIVERED = "pubsub.googleapis.com/subscription/num_undelivered_messages"
OLDEST = "pubsub.googleapis.com/subscription/oldest_unacked_message_age"
REQUESTS = "run.googleapis.com/request_count"
INSTANCES = "run.googleapis.com/container/instance_count"

# policy, its threshold expression, and time series it must and must not select
POLICIES = {
    "dead_letter_backlog": (
        "${var.alert_dead_letter.messages}",
        series(SUB, UNDELIVERED, subscription_id=DEAD_LETTER),
        [
            series(SUB, UNDELIVERED, subscription_id=PAGES),
            series(SUB, OLDEST, subscription_id=DEAD_LETTER),
        ],
    ),
    "oldest_unacked_page": (
        "${var.alert_oldest_unacked.age_seconds}",
        series(SUB, OLDEST, subscription_id=PAGES),
        [
            series(SUB, OLDEST, subscription_id=DEAD_LETTER),
            series(SUB, UNDELIVERED, subscription_id=PAGES),
        ],
    ),
    "worker_5xx_ratio": (
        "${var.alert_worker_5xx.ratio}",
        series(RUN, REQUESTS, service_name="ocrpipe-worker", response_code_class="5xx"),
        [
            series(RUN, REQUESTS, service_name="ocrpipe-worker", response_code_class="2xx"),
            series(RUN, REQUESTS, service_name="ocrpipe-ocr-gpu", response_code_class="5xx"),
        ],
    ),
    "splitter_failures": (
        "${var.alert_splitter_failures.failures}",
        series(RUN, REQUESTS, service_name="ocrpipe-splitter", response_code_class="5xx"),
        [
            series(RUN, REQUESTS, service_name="ocrpipe-splitter", response_code_class="2xx"),
            series(RUN, REQUESTS, service_name="ocrpipe-worker", response_code_class="5xx"),
        ],
    ),
    "gpu_at_max_instances": (
        "${local.gpu_alert_instances - 0.5}",
        series(RUN, INSTANCES, service_name="ocrpipe-ocr-gpu", state="active"),
        [series(RUN, INSTANCES, service_name="ocrpipe-worker", state="active")],
    ),
}


def test_exactly_the_five_alert_policies_exist(tf: dict[str, Any]) -> None:
    assert set(tf["resource"]["google_monitoring_alert_policy"]) == set(POLICIES)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_watches_the_right_time_series_against_its_threshold_variable(
    tf: dict[str, Any], name: str
) -> None:
    expected_threshold, selected, ignored = POLICIES[name]
    condition = threshold(tf, name)
    assert condition["threshold_value"] == expected_threshold
    assert condition["comparison"] == "COMPARISON_GT"
    filter_text = resolve(condition["filter"], tf)
    assert matches(filter_text, selected), filter_text
    for other in ignored:
        assert not matches(filter_text, other), (filter_text, other)
    variable = re.match(r"\$\{(?:var|local)\.(\w+)", expected_threshold)
    assert variable
    if variable.group(1) in tf["variable"]:
        assert tf["variable"][variable.group(1)]["description"]


def test_worker_5xx_is_a_ratio_of_all_worker_requests(tf: dict[str, Any]) -> None:
    condition = threshold(tf, "worker_5xx_ratio")
    denominator = resolve(condition["denominator_filter"], tf)
    for code in ("2xx", "4xx", "5xx"):
        assert matches(
            denominator,
            series(RUN, REQUESTS, service_name="ocrpipe-worker", response_code_class=code),
        )
    assert not matches(
        denominator,
        series(RUN, REQUESTS, service_name="ocrpipe-splitter", response_code_class="2xx"),
    )
    assert condition["aggregations"] == condition["denominator_aggregations"]
    assert 0 < float(variable_default(tf, "alert_worker_5xx", "ratio")) < 1


def test_gpu_alert_fires_at_gpu_max_instances_unless_told_otherwise(tf: dict[str, Any]) -> None:
    assert tf["locals"]["gpu_alert_instances"] == (
        "${coalesce(var.alert_gpu_at_max.instances, var.gpu_max_instances)}"
    )
    scaling = tf["resource"]["google_cloud_run_v2_service"]["gpu"]["template"][0]["scaling"][0]
    assert scaling["max_instance_count"] == "${var.gpu_max_instances}"
    aggregation = threshold(tf, "gpu_at_max_instances")["aggregations"][0]
    assert aggregation["cross_series_reducer"] == "REDUCE_SUM"  # active + idle, all revisions


@pytest.mark.parametrize(
    ("variable", "field", "default"),
    [
        ("alert_dead_letter", "messages", 0),
        ("alert_oldest_unacked", "age_seconds", 3600),
        ("alert_splitter_failures", "failures", 0),
        ("alert_gpu_at_max", "duration_seconds", 3600),
    ],
)
def test_threshold_defaults(tf: dict[str, Any], variable: str, field: str, default: int) -> None:
    assert int(variable_default(tf, variable, field)) == default


def test_durations_are_whole_minutes_by_default(tf: dict[str, Any]) -> None:
    for name in POLICIES:
        duration = threshold(tf, name)["duration"]
        found = re.fullmatch(r"\$\{var\.(\w+)\.(\w+)\}s", duration)
        seconds = variable_default(tf, *found.groups()) if found else duration.removesuffix("s")
        assert int(seconds) % 60 == 0, (name, duration)


def test_every_policy_notifies_the_configured_channels(tf: dict[str, Any]) -> None:
    channels = tf["locals"]["notification_channels"]
    assert "google_monitoring_notification_channel.email[*].id" in channels
    assert "var.alert_notification.channel_ids" in channels
    email = tf["resource"]["google_monitoring_notification_channel"]["email"]
    assert email["count"] == '${var.alert_notification.email == "" ? 0 : 1}'
    assert email["labels"] == {"email_address": "${var.alert_notification.email}"}
    assert variable_default(tf, "alert_notification", "email") == ""
    for name in POLICIES:
        assert policy(tf, name)["notification_channels"] == "${local.notification_channels}"


# --- tests: documentation -----------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_documentation_links_its_alert_entry_and_a_runbook(
    tf: dict[str, Any], name: str
) -> None:
    (documentation,) = policy(tf, name)["documentation"]
    assert documentation["mime_type"] == "text/markdown"
    links = re.findall(r"\]\(\$\{local\.runbook\}#([\w-]+)\)", documentation["content"])
    anchors = github_anchors(OPERATIONS.read_text(encoding="utf-8"))
    assert links and set(links) <= anchors, set(links) - anchors
    assert any(link.startswith("alert-") for link in links), links
    assert any(link.startswith("runbook-") for link in links), links
    assert tf["locals"]["runbook"] == "${var.alert_runbook_url}"


def test_operations_has_an_alerts_section_naming_every_policy(tf: dict[str, Any]) -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    for name in POLICIES:
        assert policy(tf, name)["display_name"] in section, name


# --- tests: dashboard ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard(tf: dict[str, Any]) -> dict[str, Any]:
    expr = tf["resource"]["google_monitoring_dashboard"]["pipeline"]["dashboard_json"]
    found = re.fullmatch(r'\$\{templatefile\("\$\{path\.module\}/([\w.]+)", \{(.*)\}\)\}', expr)
    assert found, expr
    args = dict(re.findall(r"(\w+) = ([\w.]+)", found.group(2)))
    values = {key: resolve(f"${{{ref}}}", tf) for key, ref in args.items()}
    template = (TERRAFORM / found.group(1)).read_text(encoding="utf-8")
    used = set(re.findall(r"(?<!\$)\$\{(\w+)\}", template))
    assert used <= set(values), used - set(values)  # templatefile fails on a missing one
    rendered = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: values[m.group(1)], template)
    parsed: dict[str, Any] = json.loads(rendered.replace("$${", "${"))
    return parsed


def _widget_filters(widget: dict[str, Any]) -> list[str]:
    return [
        data["timeSeriesQuery"]["timeSeriesFilter"]["filter"]
        for data in widget["xyChart"]["dataSets"]
    ]


def test_dashboard_has_the_five_widgets_on_metrics_that_exist(
    tf: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    log_metrics = {
        name: resolve(body["name"], tf)
        for name, body in tf["resource"]["google_logging_metric"].items()
    }
    tiles = dashboard["mosaicLayout"]["tiles"]
    by_title: dict[str, set[str]] = {}
    for tile in tiles:
        types = set()
        for filter_text in _widget_filters(tile["widget"]):
            (metric,) = re.findall(r'metric\.type="([^"]+)"', filter_text)
            if metric.startswith(USER_METRIC):
                assert metric.removeprefix(USER_METRIC) in log_metrics.values(), metric
            else:
                assert metric in GOOGLE_METRICS, metric
            types.add(metric)
        by_title[tile["widget"]["title"]] = types
    user = {name: USER_METRIC + metric for name, metric in log_metrics.items()}
    expected = {
        "Pages per minute": {user["pages_done"], user["pages_failed"]},
        "Backlog": {UNDELIVERED},
        "GPU instances": {INSTANCES},
        "Page latency": {user["page_latency"]},
        "Cold starts": {"run.googleapis.com/container/startup_latencies"},
    }
    assert len(tiles) == len(expected)
    for prefix, metrics in expected.items():
        (title,) = [t for t in by_title if t.startswith(prefix)]
        assert by_title[title] == metrics, title


def test_dashboard_charts_the_right_subscriptions_and_services(dashboard: dict[str, Any]) -> None:
    widgets = {
        t["widget"]["title"].split(" (")[0]: t["widget"] for t in dashboard["mosaicLayout"]["tiles"]
    }
    backlog = _widget_filters(widgets["Backlog"])
    for subscription in (PAGES, DEAD_LETTER):
        assert any(
            matches(f, series(SUB, UNDELIVERED, subscription_id=subscription)) for f in backlog
        )
    (gpu,) = _widget_filters(widgets["GPU instances"])
    assert matches(gpu, series(RUN, INSTANCES, service_name="ocrpipe-ocr-gpu", state="idle"))
    assert not matches(gpu, series(RUN, INSTANCES, service_name="ocrpipe-worker", state="idle"))
    (cold,) = _widget_filters(widgets["Cold starts"])
    startup = "run.googleapis.com/container/startup_latencies"
    for service in ("ocrpipe-ocr-gpu", "ocrpipe-worker", "ocrpipe-splitter"):
        assert matches(cold, series(RUN, startup, service_name=service))
