# vLLM serving local.gpu_model (var.gpu_model, an entry of ocrpipe/models.json; by default
# the table's default) on one NVIDIA L4 per instance (gpu_image/Dockerfile).
#
# * Scales to zero: an idle pipeline costs nothing here; the first page after a pause waits
#   for a cold start (instance ~5 s + image + model load, 30-90 s observed), which the
#   worker rides out by retrying inside its request budget.
# * cpu_idle = false: CPU always allocated (no throttling between requests), which Cloud
#   Run requires for GPU services and vLLM's scheduler needs.
# * Zonal redundancy off: cheaper GPU rate and no reserved failover capacity; a zonal outage
#   means Pub/Sub retries until capacity is back, which the retry/dead-letter budget covers.
# * Ingress "all" guarded by IAM (only the worker's account may invoke). "internal" would
#   force the worker's egress through a VPC (Direct VPC egress), a network this stack
#   otherwise does not need.

resource "google_cloud_run_v2_service" "gpu" {
  name                = local.gpu_service_name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = var.deletion_protection
  labels              = local.labels

  template {
    service_account                  = google_service_account.gpu.email
    max_instance_request_concurrency = var.gpu_concurrency
    timeout                          = "${local.topology.ack_deadline_seconds}s"
    gpu_zonal_redundancy_disabled    = true

    node_selector {
      accelerator = "nvidia-l4"
    }

    scaling {
      min_instance_count = 0
      max_instance_count = var.gpu_max_instances
    }

    containers {
      image = var.gpu_image

      ports {
        container_port = 8000
      }

      env {
        name  = "MAX_NUM_SEQS"
        value = tostring(var.gpu_max_num_seqs)
      }

      # The image serves the model it was built with under its id; this makes a service
      # deployed with an image of another model fail at start, not on every page.
      env {
        name  = "EXPECTED_MODEL"
        value = local.gpu_model
      }

      env {
        name  = "COMPILE_MODE"
        value = var.gpu_compile_mode
      }

      resources {
        limits = {
          cpu              = "8"
          memory           = "32Gi"
          "nvidia.com/gpu" = "1"
        }
        cpu_idle          = false
        startup_cpu_boost = true
      }

      # vLLM's /health answers 200 once the engine is up. Cloud Run caps a startup probe at
      # 240 s of period x failures (plus up to 240 s initial delay); the model loads in
      # 30-90 s from local disk, so 30 s + 24 x 10 s leaves room for torch.compile and CUDA
      # graph capture with an empty cache (gpu_compile_mode = "compiled"), unmeasured so
      # far: docs/DEPLOY.md says how to measure it on the first deployment.
      startup_probe {
        initial_delay_seconds = var.gpu_startup_probe.initial_delay_seconds
        period_seconds        = var.gpu_startup_probe.period_seconds
        failure_threshold     = var.gpu_startup_probe.failure_threshold
        timeout_seconds       = 5

        http_get {
          path = "/health"
          port = 8000
        }
      }

      # A wedged engine stops answering /health: restart the instance.
      liveness_probe {
        period_seconds    = 30
        failure_threshold = 3
        timeout_seconds   = 10

        http_get {
          path = "/health"
          port = 8000
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.gpu_concurrency >= var.gpu_max_num_seqs
      error_message = "gpu_concurrency must be at least gpu_max_num_seqs, or the vLLM batch never fills."
    }
    precondition {
      condition     = contains(keys(local.models.models), local.gpu_model)
      error_message = "gpu_model must have an entry in ocrpipe/models.json (${join(", ", keys(local.models.models))}): the GPU image is built from it and the worker reads it."
    }
  }

  depends_on = [google_project_service.apis]
}
