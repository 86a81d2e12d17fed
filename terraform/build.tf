# What the splitter's source build needs before the function can be created.
#
# Gen2 copies the uploaded source (functions.tf) into its own bucket
# gcf-v2-sources-PROJECT_NUMBER-REGION, and the build reads it from there as the build
# account: without read access the first deploy fails with "Access to bucket
# gcf-v2-sources-... denied". Google's page on the build service account lists log writing,
# Artifact Registry writing (iam.tf) and reading the function source from Cloud Storage.
#
# That bucket is created by Cloud Functions with the first function in the region, so it
# does not exist before this apply and cannot carry a bucket-level grant. The grant is on
# the project, narrowed by an IAM condition to that bucket and its objects (list is checked
# on the bucket, get on each object; the CMEK variant's name only adds a suffix).

locals {
  gcf_sources_bucket = "gcf-v2-sources-${data.google_project.this.number}-${var.region}"
}

resource "google_project_iam_member" "builder_reads_gcf_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.builder.member

  condition {
    title       = "gcf-v2-sources-only"
    description = "Only the bucket Cloud Functions copies the splitter's source into"
    expression  = "resource.name == \"projects/_/buckets/${local.gcf_sources_bucket}\" || resource.name.startsWith(\"projects/_/buckets/${local.gcf_sources_bucket}/\") || resource.name.startsWith(\"projects/_/buckets/${local.gcf_sources_bucket}-\")"
  }
}

# New IAM grants take a minute or more to be seen everywhere; a function created at once
# fails its build (or its Eventarc trigger) on a grant that is already there. The function
# waits for every grant its build and its trigger need (functions.tf depends_on).
resource "time_sleep" "function_grants_propagate" {
  create_duration = "90s"

  triggers = {
    builder = google_service_account.builder.email
    trigger = google_service_account.trigger.email
  }

  depends_on = [
    google_project_iam_member.builder_reads_gcf_sources,
    google_project_iam_member.builder_writes_logs,
    google_artifact_registry_repository_iam_member.builder_pushes_images,
    google_storage_bucket_iam_member.builder_reads_source,
    google_project_iam_member.trigger_receives_events,
    google_project_iam_member.gcs_agent_publishes_events,
  ]
}
