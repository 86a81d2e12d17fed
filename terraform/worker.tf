# The OCR worker: Cloud Run service behind the Pub/Sub push subscription.
#
# Ingress is internal: Pub/Sub push from this project counts as internal traffic, so the
# service is unreachable from the internet even before IAM (only the push account may
# invoke it, iam.tf). Concurrency x max instances bounds the OCR requests in flight.

resource "google_cloud_run_v2_service" "worker" {
  name                = local.worker_service_name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection
  labels              = local.labels

  template {
    service_account                  = google_service_account.worker.email
    max_instance_request_concurrency = var.worker_concurrency
    # The push HTTP timeout is the ack deadline; the worker answers within it
    # (OCRPIPE_OCR_BUDGET_S defaults to the ack deadline minus a margin).
    timeout = "${local.topology.ack_deadline_seconds}s"

    scaling {
      min_instance_count = 0
      max_instance_count = var.worker_max_instances
    }

    containers {
      image = var.worker_image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.worker_resources.cpu
          memory = var.worker_resources.memory
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.worker_env
        content {
          name  = env.key
          value = env.value
        }
      }
    }
  }

  depends_on = [google_project_service.apis]
}
