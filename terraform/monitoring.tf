# Alerts, log-based metrics and one dashboard. docs/OPERATIONS.md#alerts says what each
# alert means and which runbook entry answers it; every policy's documentation links there.
#
# Log-based metrics read the worker's JSON lines (ocrpipe/logs.py) as Cloud Run stores them:
# the line's fields under jsonPayload, `logging.googleapis.com/labels` as labels. They
# depend on exactly these log lines (tests/test_terraform_monitoring.py runs the worker and
# matches the filters against what it prints):
#
#   pages_done, page_latency  ocr_worker/app.py, logger "ocr_worker": "page written" with
#                             duration_ms (push received to answer), once per delivery
#                             that wrote a page. ocrpipe/worker/page_work.py logs "page written" too
#                             (OCR time only, logger ocrpipe.worker.page_work): the logger condition
#                             keeps every page counted once.
#   pages_failed              ocrpipe/worker/page_work.py: "page failed for good: <message>" with
#                             reason (the error record's reason code), once per page.
#
# No notification channel configured (alert_notification empty): the policies still exist
# and open incidents on Cloud Monitoring's Alerting page, but notify no one.

locals {
  runbook = var.alert_runbook_url

  worker_logs = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${local.worker_service_name}\""

  page_written_log_filter = "${local.worker_logs} AND jsonPayload.logger=\"ocr_worker\" AND jsonPayload.message=\"page written\""
  page_failed_log_filter  = "${local.worker_logs} AND jsonPayload.message=~\"^page failed for good: \""

  run_requests = "resource.type=\"cloud_run_revision\" AND metric.type=\"run.googleapis.com/request_count\""

  notification_channels = concat(
    google_monitoring_notification_channel.email[*].id,
    var.alert_notification.channel_ids,
  )
}

# --- log-based metrics -------------------------------------------------------------------

resource "google_logging_metric" "pages_done" {
  name        = "ocrpipe/pages_done"
  description = "Pages whose Markdown the worker wrote (one per page; duplicates and already-done deliveries are not counted)."
  filter      = local.page_written_log_filter

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "ocrpipe pages done"
  }

  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "pages_failed" {
  name        = "ocrpipe/pages_failed"
  description = "Pages that failed for good (an error record was written), by reason code."
  filter      = local.page_failed_log_filter

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "ocrpipe pages failed"

    labels {
      key         = "reason"
      value_type  = "STRING"
      description = "Reason code of the page's error record (e.g. ocr_repetition_loop)."
    }
  }

  label_extractors = {
    reason = "EXTRACT(jsonPayload.reason)"
  }

  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "page_latency" {
  name        = "ocrpipe/page_latency"
  description = "Time from receiving a page's push delivery to answering it, for deliveries that wrote the page (includes waiting out GPU cold starts)."
  filter      = local.page_written_log_filter

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "ms"
    display_name = "ocrpipe page latency"
  }

  value_extractor = "EXTRACT(jsonPayload.duration_ms)"

  # 100 ms x 1.25^48 is about 75 minutes: covers the 600 s ack deadline with room.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 48
      growth_factor      = 1.25
      scale              = 100
    }
  }

  depends_on = [google_project_service.apis]
}

# --- where alerts go ---------------------------------------------------------------------

resource "google_monitoring_notification_channel" "email" {
  count = var.alert_notification.email == "" ? 0 : 1

  display_name = "ocrpipe alerts"
  type         = "email"
  labels = {
    email_address = var.alert_notification.email
  }
  user_labels = local.labels

  depends_on = [google_project_service.apis]
}

# --- alert policies ----------------------------------------------------------------------

resource "google_monitoring_alert_policy" "dead_letter_backlog" {
  display_name          = "ocrpipe: pages in the dead-letter topic"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "undelivered messages in the dead-letter subscription"

    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.dead_letter_pull.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_dead_letter.messages
      duration        = "${var.alert_dead_letter.duration_seconds}s"

      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "ocrpipe: pages in the dead-letter topic"
    content   = <<-EOT
      Pages failed ${local.topology.max_delivery_attempts} push deliveries in a row and
      wait in `${google_pubsub_subscription.dead_letter_pull.name}`. Pub/Sub discards them
      after 7 days. What this means: [Alert: dead-letter backlog](${local.runbook}#alert-dead-letter-backlog).
      Runbook: [a page is stuck in the dead-letter topic](${local.runbook}#runbook-a-page-is-stuck-in-the-dead-letter-topic).
    EOT
  }

  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "oldest_unacked_page" {
  display_name          = "ocrpipe: pages waiting too long"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "oldest unacked page message older than ${var.alert_oldest_unacked.age_seconds} s"

    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.pages_push.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_oldest_unacked.age_seconds
      duration        = "${var.alert_oldest_unacked.duration_seconds}s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "ocrpipe: pages waiting too long"
    content   = <<-EOT
      A page message in `${google_pubsub_subscription.pages_push.name}` has waited more
      than ${var.alert_oldest_unacked.age_seconds} s: the GPU service is down, or more
      work is queued than the GPUs clear in that time. What this means:
      [Alert: pages waiting too long](${local.runbook}#alert-pages-waiting-too-long).
      Runbook: [the GPU service is down](${local.runbook}#runbook-the-gpu-service-is-down).
    EOT
  }

  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "worker_5xx_ratio" {
  display_name          = "ocrpipe: worker answers 5xx"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "share of worker requests answered 5xx above ${var.alert_worker_5xx.ratio}"

    condition_threshold {
      filter             = "${local.run_requests} AND resource.labels.service_name=\"${google_cloud_run_v2_service.worker.name}\" AND metric.labels.response_code_class=\"5xx\""
      denominator_filter = "${local.run_requests} AND resource.labels.service_name=\"${google_cloud_run_v2_service.worker.name}\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_worker_5xx.ratio
      duration           = "${var.alert_worker_5xx.duration_seconds}s"

      aggregations {
        alignment_period     = "${var.alert_worker_5xx.window_seconds}s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }

      denominator_aggregations {
        alignment_period     = "${var.alert_worker_5xx.window_seconds}s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "ocrpipe: worker answers 5xx"
    content   = <<-EOT
      More than ${var.alert_worker_5xx.ratio * 100}% of the page deliveries to
      `${google_cloud_run_v2_service.worker.name}` were answered 5xx (503: the OCR service
      stayed unavailable for a whole request budget; 500: a worker bug). Each one is a
      nack that Pub/Sub retries and eventually dead-letters. What this means:
      [Alert: worker answers 5xx](${local.runbook}#alert-worker-answers-5xx).
      Runbooks: [the GPU service is down](${local.runbook}#runbook-the-gpu-service-is-down),
      [a bad deploy](${local.runbook}#runbook-a-bad-deploy).
    EOT
  }

  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "splitter_failures" {
  display_name          = "ocrpipe: splitter failures"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "splitter invocations answered 5xx"

    condition_threshold {
      filter          = "${local.run_requests} AND resource.labels.service_name=\"${google_cloudfunctions2_function.splitter.name}\" AND metric.labels.response_code_class=\"5xx\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_splitter_failures.failures
      duration        = "0s"

      aggregations {
        alignment_period     = "${var.alert_splitter_failures.window_seconds}s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "ocrpipe: splitter failures"
    content   = <<-EOT
      The splitter function `${google_cloudfunctions2_function.splitter.name}` failed more
      than ${var.alert_splitter_failures.failures} time(s) in
      ${var.alert_splitter_failures.window_seconds} s (it raised, ran out of memory or hit
      its 540 s timeout). Eventarc retries each event for up to 24 h. What this means:
      [Alert: splitter failures](${local.runbook}#alert-splitter-failures).
      Runbook: [a bad deploy](${local.runbook}#runbook-a-bad-deploy).
    EOT
  }

  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "gpu_at_max_instances" {
  display_name          = "ocrpipe: GPU instances at the maximum"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "GPU service instances at the maximum"

    # "At least N" as "more than N - 0.5": instance counts are whole numbers, and the API
    # documents COMPARISON_GT / COMPARISON_LT as the comparisons it evaluates.
    condition_threshold {
      filter          = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloud_run_v2_service.gpu.name}\" AND metric.type=\"run.googleapis.com/container/instance_count\""
      comparison      = "COMPARISON_GT"
      threshold_value = local.gpu_alert_instances - 0.5
      duration        = "${var.alert_gpu_at_max.duration_seconds}s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "ocrpipe: GPU instances at the maximum"
    content   = <<-EOT
      `${google_cloud_run_v2_service.gpu.name}` has run ${local.gpu_alert_instances} or
      more instances for ${var.alert_gpu_at_max.duration_seconds} s: the pipeline is
      running at its GPU ceiling and pages queue. What this means:
      [Alert: GPU instances at the maximum](${local.runbook}#alert-gpu-instances-at-the-maximum).
      Runbook: [the GPU service is down](${local.runbook}#runbook-the-gpu-service-is-down).
    EOT
  }

  depends_on = [google_project_service.apis]
}

locals {
  gpu_alert_instances = coalesce(var.alert_gpu_at_max.instances, var.gpu_max_instances)
}

# --- dashboard ---------------------------------------------------------------------------

resource "google_monitoring_dashboard" "pipeline" {
  dashboard_json = templatefile("${path.module}/dashboard.json.tftpl", {
    pages_done_metric        = google_logging_metric.pages_done.name
    pages_failed_metric      = google_logging_metric.pages_failed.name
    page_latency_metric      = google_logging_metric.page_latency.name
    pages_subscription       = google_pubsub_subscription.pages_push.name
    dead_letter_subscription = google_pubsub_subscription.dead_letter_pull.name
    worker_service           = google_cloud_run_v2_service.worker.name
    gpu_service              = google_cloud_run_v2_service.gpu.name
    splitter_service         = google_cloudfunctions2_function.splitter.name
  })

  depends_on = [google_project_service.apis]
}
