output "buckets" {
  description = "Bucket names by role."
  value = {
    input  = google_storage_bucket.input.name
    work   = google_storage_bucket.work.name
    output = google_storage_bucket.output.name
    source = google_storage_bucket.source.name
  }
}

output "pubsub" {
  description = "Topic and subscription names (from ocrpipe/topology.json)."
  value = {
    pages_topic              = google_pubsub_topic.pages.name
    pages_subscription       = google_pubsub_subscription.pages_push.name
    dead_letter_topic        = google_pubsub_topic.dead_letter.name
    dead_letter_subscription = google_pubsub_subscription.dead_letter_pull.name
  }
}

output "worker_url" {
  description = "URL of the OCR worker (internal ingress; Pub/Sub pushes here)."
  value       = google_cloud_run_v2_service.worker.uri
}

output "gpu_url" {
  description = "URL of the vLLM service; invoke with an ID token of an allowed identity."
  value       = google_cloud_run_v2_service.gpu.uri
}

output "splitter_function" {
  description = "Name of the splitter function."
  value       = google_cloudfunctions2_function.splitter.name
}

output "service_accounts" {
  description = "Service account emails by role."
  value = {
    splitter = google_service_account.splitter.email
    worker   = google_service_account.worker.email
    gpu      = google_service_account.gpu.email
    push     = google_service_account.push.email
    trigger  = google_service_account.trigger.email
    builder  = google_service_account.builder.email
  }
}

output "env_vars" {
  description = "OCRPIPE_ settings for the ocrpipe CLI: eval the export lines from this map."
  value       = local.common_env
}

output "monitoring" {
  description = "Alert policies (by alert), the dashboard, the log-based metrics and the notification channels alerts go to (empty: none)."
  value = {
    alert_policies = {
      dead_letter_backlog  = google_monitoring_alert_policy.dead_letter_backlog.name
      oldest_unacked_page  = google_monitoring_alert_policy.oldest_unacked_page.name
      worker_5xx_ratio     = google_monitoring_alert_policy.worker_5xx_ratio.name
      splitter_failures    = google_monitoring_alert_policy.splitter_failures.name
      gpu_at_max_instances = google_monitoring_alert_policy.gpu_at_max_instances.name
    }
    dashboard             = google_monitoring_dashboard.pipeline.id
    log_metrics           = [google_logging_metric.pages_done.name, google_logging_metric.pages_failed.name, google_logging_metric.page_latency.name]
    notification_channels = local.notification_channels
  }
}

output "reconciler_job" {
  description = "The reconciler job: `gcloud run jobs execute NAME --region REGION --wait` runs it now."
  value       = google_cloud_run_v2_job.reconciler.name
}
