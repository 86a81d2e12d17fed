# One service account per service, and only resource-level grants where the API has them.
#
# The pipeline's bucket, topic and subscription grants are not written here: they come from
# ocrpipe/iam.json, the file the local stack's authorizing proxies enforce, so what runs
# locally and what is deployed are the same grants (tests/test_terraform.py checks the
# wiring). docs/DEPLOY.md, "Who may do what", has them as a table, which
# tests/test_grant_table.py checks against iam.json. Written here, the grants that are not
# in iam.json:
#
#   worker    invokes the GPU service
#   trigger   Eventarc's identity ("eventarc" in iam.json): the only invoker of the splitter
#   scheduler Cloud Scheduler's identity: may only start the reconciler job (reconciler.tf)
#   gpu       nothing: the model is in the image
#   push      the identity Pub/Sub's OIDC token names; the only invoker of the worker
#   builder   Cloud Build identity for the splitter's source build
#
# Project-level grants, each because no narrower scope exists: Eventarc's event receiver
# role, the GCS service agent's publisher role (GCS-triggered Eventarc), and log writing for
# the build. Nothing gets editor or owner.

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # The one source of truth for the pipeline's grants (ocrpipe.local.iam.policy reads it too).
  iam = jsondecode(file("${path.module}/../ocrpipe/iam.json"))

  # Who each identity of iam.json is in this project.
  iam_members = {
    splitter    = [google_service_account.splitter.member]
    worker      = [google_service_account.worker.member]
    reconciler  = [google_service_account.reconciler.member]
    eventarc    = [google_service_account.trigger.member]
    "gcs-agent" = ["serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"]
    operator    = var.operators
    owner       = [] # the project's owner holds roles/owner already; iam.json grants it nothing
  }

  # What iam.json's logical names are here.
  iam_buckets = {
    input  = google_storage_bucket.input.name
    work   = google_storage_bucket.work.name
    output = google_storage_bucket.output.name
  }
  iam_topics = {
    pages_topic       = google_pubsub_topic.pages.name
    dead_letter_topic = google_pubsub_topic.dead_letter.name
    documents_topic   = google_pubsub_topic.documents.name
  }
  iam_subscriptions = {
    pages_push_subscription  = google_pubsub_subscription.pages_push.name
    dead_letter_subscription = google_pubsub_subscription.dead_letter_pull.name
  }

  # One entry per grant and member, keyed "<identity>/<kind>/<name>/<role>/<member index>"
  # (keys known at plan time). Grants marked local_only (the local notifications topic)
  # have no counterpart here: in production GCS publishes as its service agent through the
  # project-level gcs_agent_publishes_events below.
  iam_grants = merge(flatten([
    for identity, spec in local.iam.identities : [
      for grant in spec.grants : {
        for index, member in local.iam_members[identity] :
        "${identity}/${try("bucket/${grant.bucket}", "topic/${grant.topic}", "subscription/${grant.subscription}")}/${grant.role}/${index}" => {
          member       = member
          role         = grant.role
          bucket       = try(grant.bucket, null)
          topic        = try(grant.topic, null)
          subscription = try(grant.subscription, null)
          condition    = try(grant.condition, null)
        }
      } if !try(grant.local_only, false)
    ]
  ])...)

  iam_bucket_grants       = { for key, grant in local.iam_grants : key => grant if grant.bucket != null }
  iam_topic_grants        = { for key, grant in local.iam_grants : key => grant if grant.topic != null }
  iam_subscription_grants = { for key, grant in local.iam_grants : key => grant if grant.subscription != null }
}

resource "google_service_account" "splitter" {
  account_id   = local.iam.identities.splitter.service_account
  display_name = local.iam.identities.splitter.display_name
}

resource "google_service_account" "worker" {
  account_id   = local.iam.identities.worker.service_account
  display_name = local.iam.identities.worker.display_name
}

resource "google_service_account" "reconciler" {
  account_id   = local.iam.identities.reconciler.service_account
  display_name = local.iam.identities.reconciler.display_name
}

resource "google_service_account" "scheduler" {
  account_id   = "ocrpipe-scheduler"
  display_name = "ocrpipe reconciler schedule"
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
  account_id   = local.iam.identities.eventarc.service_account
  display_name = local.iam.identities.eventarc.display_name
}

resource "google_service_account" "builder" {
  account_id   = "ocrpipe-builder"
  display_name = "ocrpipe splitter build"
}

# --- the pipeline's grants, from ocrpipe/iam.json -----------------------------------------

resource "google_storage_bucket_iam_member" "grants" {
  for_each = local.iam_bucket_grants

  bucket = local.iam_buckets[each.value.bucket]
  role   = each.value.role
  member = each.value.member

  # IAM checks storage.objects.list on the bucket, so a condition on object names (the
  # splitter's) never grants a list.
  dynamic "condition" {
    for_each = each.value.condition == null ? [] : [each.value.condition]
    content {
      title       = condition.value.title
      description = condition.value.description
      expression  = replace(condition.value.expression, "$${bucket}", local.iam_buckets[each.value.bucket])
    }
  }
}

resource "google_pubsub_topic_iam_member" "grants" {
  for_each = local.iam_topic_grants

  topic  = local.iam_topics[each.value.topic]
  role   = each.value.role
  member = each.value.member
}

resource "google_pubsub_subscription_iam_member" "grants" {
  for_each = local.iam_subscription_grants

  subscription = local.iam_subscriptions[each.value.subscription]
  role         = each.value.role
  member       = each.value.member
}

# The grants that were written out here before iam.json: same grants, new addresses.
moved {
  from = google_storage_bucket_iam_member.splitter_reads_input
  to   = google_storage_bucket_iam_member.grants["splitter/bucket/input/roles/storage.objectViewer/0"]
}

moved {
  from = google_storage_bucket_iam_member.splitter_writes_work
  to   = google_storage_bucket_iam_member.grants["splitter/bucket/work/roles/storage.objectUser/0"]
}

moved {
  from = google_storage_bucket_iam_member.splitter_creates_manifests
  to   = google_storage_bucket_iam_member.grants["splitter/bucket/output/roles/storage.objectUser/0"]
}

moved {
  from = google_storage_bucket_iam_member.worker_reads_input
  to   = google_storage_bucket_iam_member.grants["worker/bucket/input/roles/storage.objectViewer/0"]
}

moved {
  from = google_storage_bucket_iam_member.worker_reads_work
  to   = google_storage_bucket_iam_member.grants["worker/bucket/work/roles/storage.objectViewer/0"]
}

moved {
  from = google_storage_bucket_iam_member.worker_writes_output
  to   = google_storage_bucket_iam_member.grants["worker/bucket/output/roles/storage.objectUser/0"]
}

moved {
  from = google_pubsub_topic_iam_member.splitter_publishes_pages
  to   = google_pubsub_topic_iam_member.grants["splitter/topic/pages_topic/roles/pubsub.publisher/0"]
}

# --- outside the pipeline's data path -----------------------------------------------------

resource "google_storage_bucket_iam_member" "builder_reads_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.builder.member
}

# Dead-lettering: the Pub/Sub service agent forwards to the DLQ topic and must be able to
# acknowledge on the source subscription. (Modelled only on the local stack: the emulator
# dead-letters internally.)
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
