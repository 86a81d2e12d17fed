# The OCR worker: Cloud Run service behind the Pub/Sub push subscription.
#
# Ingress is internal: Pub/Sub push from this project counts as internal traffic, so the
# service is unreachable from the internet even before IAM (only the push account may
# invoke it, iam.tf). Concurrency x max instances bounds the OCR requests in flight.
#
# Memory follows from the pages in flight. Each holds its image, the base64 data URL and
# the JSON request body: measured by bench/worker_memory.py (docs/PERFORMANCE.md, "Worker
# memory"), ~140 MiB for the process and ~150 MiB per page for the largest page the
# splitter makes (1540 x 6160 px of colour noise, a 27 MiB PNG; a noisy grey page of that
# size, 9 MiB, needs ~40). The precondition keeps worker_concurrency of the largest pages
# under 80 % of the memory, so raising the concurrency means raising the memory with it.

locals {
  worker_base_mib          = 160
  worker_mib_per_in_flight = 160
  worker_memory_headroom   = 0.8
  worker_memory_mib = (
    endswith(var.worker_resources.memory, "Gi")
    ? tonumber(trimsuffix(var.worker_resources.memory, "Gi")) * 1024
    : tonumber(trimsuffix(var.worker_resources.memory, "Mi"))
  )
  worker_memory_needed_mib = ceil(
    (local.worker_base_mib + var.worker_concurrency * local.worker_mib_per_in_flight) / local.worker_memory_headroom
  )
}

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

  lifecycle {
    precondition {
      condition     = local.worker_memory_mib >= local.worker_memory_needed_mib
      error_message = "worker_resources.memory cannot hold worker_concurrency pages in flight: give the worker at least ${local.worker_memory_needed_mib}Mi, or lower worker_concurrency."
    }
  }

  depends_on = [google_project_service.apis]
}
