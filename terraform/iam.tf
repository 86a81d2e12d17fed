# One service account per service, and only resource-level grants where the API has them.
#
#   splitter  reads input, writes work, creates manifest.json / error.json in output,
#             publishes to the pages topic
#   worker    reads input (is this generation still current?) and work, owns output,
#             invokes the GPU service
#   gpu       nothing: the model is in the image
#   push      the identity Pub/Sub's OIDC token names; the only invoker of the worker
#   trigger   Eventarc's identity; the only invoker of the splitter
#   builder   Cloud Build identity for the splitter's source build
#
# Project-level grants, each because no narrower scope exists: Eventarc's event receiver
# role, the GCS service agent's publisher role (GCS-triggered Eventarc), and log writing for
# the build. Nothing gets editor or owner.

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_service_account" "splitter" {
  account_id   = "ocrpipe-splitter"
  display_name = "ocrpipe splitter function"
}

resource "google_service_account" "worker" {
  account_id   = "ocrpipe-worker"
  display_name = "ocrpipe OCR worker"
}

resource "google_service_account" "gpu" {
  account_id   = "ocrpipe-gpu"
  display_name = "ocrpipe vLLM GPU service"
}

resource "google_service_account" "push" {
  account_id   = "ocrpipe-push"
  display_name = "ocrpipe Pub/Sub push identity"
}

resource "google_service_account" "trigger" {
  account_id   = "ocrpipe-trigger"
  display_name = "ocrpipe Eventarc trigger identity"
}

resource "google_service_account" "builder" {
  account_id   = "ocrpipe-builder"
  display_name = "ocrpipe splitter build"
}

# --- buckets -----------------------------------------------------------------------------

resource "google_storage_bucket_iam_member" "splitter_reads_input" {
  bucket = google_storage_bucket.input.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.splitter.member
}

resource "google_storage_bucket_iam_member" "splitter_writes_work" {
  bucket = google_storage_bucket.work.name
  role   = "roles/storage.objectUser"
  member = google_service_account.splitter.member
}

# The splitter writes exactly two kinds of output objects (ocrpipe/naming.py): the page plan
# <key>/@<generation>/manifest.json and, for a rejected input, <key>/@<generation>/error.json.
# objectUser rather than objectCreator so a repeated create-only write gets 412 (already
# there) instead of 403; the condition keeps it away from every other name, so it can never
# write or delete page Markdown, document.md or page error records.
resource "google_storage_bucket_iam_member" "splitter_creates_manifests" {
  bucket = google_storage_bucket.output.name
  role   = "roles/storage.objectUser"
  member = google_service_account.splitter.member

  condition {
    title       = "splitter-records-only"
    description = "Only <key>/@<generation>/manifest.json and .../error.json"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.output.name}/objects/\") && (resource.name.endsWith(\"/manifest.json\") || resource.name.endsWith(\"/error.json\"))"
  }
}

resource "google_storage_bucket_iam_member" "worker_reads_input" {
  bucket = google_storage_bucket.input.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.worker.member
}

resource "google_storage_bucket_iam_member" "worker_reads_work" {
  bucket = google_storage_bucket.work.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.worker.member
}

resource "google_storage_bucket_iam_member" "worker_writes_output" {
  bucket = google_storage_bucket.output.name
  role   = "roles/storage.objectUser"
  member = google_service_account.worker.member
}

resource "google_storage_bucket_iam_member" "builder_reads_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.builder.member
}

# --- Pub/Sub -----------------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "splitter_publishes_pages" {
  topic  = google_pubsub_topic.pages.name
  role   = "roles/pubsub.publisher"
  member = google_service_account.splitter.member
}

# Dead-lettering: the Pub/Sub service agent forwards to the DLQ topic and must be able to
# acknowledge on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent

  depends_on = [google_project_service_identity.pubsub]
}

resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  subscription = google_pubsub_subscription.pages_push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# Push authentication: the Pub/Sub service agent mints OIDC tokens as the push account.
resource "google_service_account_iam_member" "pubsub_mints_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent

  depends_on = [google_project_service_identity.pubsub]
}

# --- who may invoke what -----------------------------------------------------------------

resource "google_cloud_run_v2_service_iam_member" "push_invokes_worker" {
  name     = google_cloud_run_v2_service.worker.name
  location = google_cloud_run_v2_service.worker.location
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

resource "google_cloud_run_v2_service_iam_member" "worker_invokes_gpu" {
  name     = google_cloud_run_v2_service.gpu.name
  location = google_cloud_run_v2_service.gpu.location
  role     = "roles/run.invoker"
  member   = google_service_account.worker.member
}

# A gen2 function runs as a Cloud Run service of the same name; Eventarc calls it.
resource "google_cloud_run_v2_service_iam_member" "trigger_invokes_splitter" {
  name     = google_cloudfunctions2_function.splitter.name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.trigger.member
}

# --- project-level, where no narrower scope exists --------------------------------------

resource "google_project_iam_member" "trigger_receives_events" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.trigger.member
}

# GCS publishes its object notifications for Eventarc through Pub/Sub as its service agent.
data "google_storage_project_service_account" "gcs" {
  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "gcs_agent_publishes_events" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_project_iam_member" "builder_writes_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.builder.member
}

resource "google_artifact_registry_repository_iam_member" "builder_pushes_images" {
  project    = var.project_id
  location   = var.region
  repository = var.artifact_registry_repository
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.builder.member
}
