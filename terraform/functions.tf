# The splitter: a Cloud Functions gen2 CloudEvent function on the input bucket's finalize
# events. Its source is build/splitter, made by `splitter_fn/package.sh` (main.py plus a
# wheel of this project), so run that before `terraform plan`.

data "archive_file" "splitter" {
  type        = "zip"
  source_dir  = "${path.module}/../build/splitter"
  output_path = "${path.module}/../build/splitter.zip"
}

resource "google_storage_bucket_object" "splitter_source" {
  name   = "splitter/${data.archive_file.splitter.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.splitter.output_path
}

resource "google_cloudfunctions2_function" "splitter" {
  name     = "ocrpipe-splitter"
  location = var.region
  labels   = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = "on_finalize"
    service_account   = google_service_account.builder.id
    docker_repository = "projects/${var.project_id}/locations/${var.region}/repositories/${var.artifact_registry_repository}"

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.splitter_source.name
      }
    }
  }

  service_config {
    available_memory = var.splitter.memory
    available_cpu    = var.splitter.cpu
    # 540 s is the ceiling for event-driven functions. A long PDF that cannot be rendered
    # in time fails and Eventarc retries; the manifest and page images already written are
    # reused (create-only), so each retry gets further.
    timeout_seconds                  = 540
    max_instance_count               = var.splitter.max_instances
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.splitter.email
    environment_variables            = local.splitter_env
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.trigger.email

    event_filters {
      attribute = "bucket"
      value     = google_storage_bucket.input.name
    }
  }

  # The grants the build and the trigger need, and time for them to propagate (build.tf).
  depends_on = [
    google_project_service.apis,
    google_project_service_identity.eventarc,
    time_sleep.function_grants_propagate,
  ]
}
