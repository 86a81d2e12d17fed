# The reconciler: a Cloud Run job that Cloud Scheduler starts every few hours. It finds the
# documents whose pages have neither a result nor a message that can still be delivered
# (Pub/Sub dropped it after the subscription's retention, Eventarc gave up on a finalize
# event, a subscription was recreated) and puts them back: ocrpipe/splitter/reconcile.py,
# the same code `ocrpipe reconcile` and the local stack's restart run.
#
# It runs the worker's image (the whole ocrpipe distribution) with another command, as its
# own service account with the "reconciler" grants of ocrpipe/iam.json (iam.tf). Only the
# scheduler's account may start it; operators may too (`gcloud run jobs execute`), and may
# impersonate its account for `ocrpipe reconcile --lost-after 0` after an incident
# (docs/OPERATIONS.md, "Runbook: pages lost from Pub/Sub").

locals {
  reconciler_job_name = "ocrpipe-reconciler"

  reconciler_env = merge(local.common_env, {
    OCRPIPE_RENDER_PROCESSES = tostring(var.reconciler.render_processes)
  })
}

resource "google_cloud_run_v2_job" "reconciler" {
  name                = local.reconciler_job_name
  location            = var.region
  deletion_protection = var.deletion_protection
  labels              = local.labels

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.reconciler.email
      # A run over a large backlog lists every document and may render expired pages; a
      # run that outlives the schedule is harmless (each document is worked on under its
      # split lease, and what one run republished the next finds dated).
      timeout     = var.reconciler.timeout
      max_retries = 1

      containers {
        image   = var.worker_image
        command = ["python", "-m", "reconciler_job.main"]

        resources {
          limits = {
            cpu    = var.reconciler.cpu
            memory = var.reconciler.memory
          }
        }

        dynamic "env" {
          for_each = local.reconciler_env
          content {
            name  = env.key
            value = env.value
          }
        }
      }
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_scheduler_job" "reconciler" {
  name             = local.reconciler_job_name
  region           = var.region
  description      = "Runs the ocrpipe reconciler job (terraform/reconciler.tf)."
  schedule         = var.reconciler.schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "180s"

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/${google_cloud_run_v2_job.reconciler.id}:run"

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_project_service.apis]
}

# Who may start the job: the scheduler's account, and the operators.
resource "google_cloud_run_v2_job_iam_member" "scheduler_runs_reconciler" {
  name     = google_cloud_run_v2_job.reconciler.name
  location = google_cloud_run_v2_job.reconciler.location
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

resource "google_cloud_run_v2_job_iam_member" "operators_run_reconciler" {
  for_each = toset(var.operators)

  name     = google_cloud_run_v2_job.reconciler.name
  location = google_cloud_run_v2_job.reconciler.location
  role     = "roles/run.invoker"
  member   = each.value
}

# `ocrpipe reconcile` by hand acts as the reconciler (ADC impersonating its account): the
# operators' own grants stay without page images, leases and the documents topic.
resource "google_service_account_iam_member" "operators_act_as_reconciler" {
  for_each = toset(var.operators)

  service_account_id = google_service_account.reconciler.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.value
}
