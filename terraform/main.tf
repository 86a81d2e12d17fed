# Shared facts: the project, the Pub/Sub topology and the OCRPIPE_ settings every service reads.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # The one source of truth for topic and subscription names, ack deadline, retry and
  # dead-letter policy: the same file ocrpipe.topology and the local stack read.
  topology = jsondecode(file("${path.module}/../ocrpipe/topology.json"))

  # The models ocrpipe knows, one entry each: the same table the worker and the GPU image's
  # build read. gpu_model must be one of them (gpu.tf); null is the table's default.
  models    = jsondecode(file("${path.module}/../ocrpipe/models.json"))
  gpu_model = coalesce(var.gpu_model, local.models.default)

  buckets = {
    input  = coalesce(var.bucket_names.input, "${var.project_id}-ocrpipe-input")
    work   = coalesce(var.bucket_names.work, "${var.project_id}-ocrpipe-work")
    output = coalesce(var.bucket_names.output, "${var.project_id}-ocrpipe-output")
    source = coalesce(var.bucket_names.source, "${var.project_id}-ocrpipe-source")
  }

  worker_service_name = "ocrpipe-worker"
  gpu_service_name    = "ocrpipe-ocr-gpu"

  # Cloud Run's deterministic URL (https://SERVICE-PROJECT_NUMBER.REGION.run.app), known
  # before the service exists: the worker needs its own URL as the push token audience.
  worker_url = "https://${local.worker_service_name}-${data.google_project.this.number}.${var.region}.run.app"

  labels = merge({ app = "ocrpipe" }, var.labels)

  # OCRPIPE_ settings (ocrpipe/settings.py). Only names Settings defines; a test checks it.
  common_env = {
    OCRPIPE_PROJECT                  = var.project_id
    OCRPIPE_INPUT_BUCKET             = local.buckets.input
    OCRPIPE_WORK_BUCKET              = local.buckets.work
    OCRPIPE_OUTPUT_BUCKET            = local.buckets.output
    OCRPIPE_PAGES_TOPIC              = local.topology.pages_topic
    OCRPIPE_PAGES_SUBSCRIPTION       = local.topology.pages_push_subscription
    OCRPIPE_DEAD_LETTER_TOPIC        = local.topology.dead_letter_topic
    OCRPIPE_DEAD_LETTER_SUBSCRIPTION = local.topology.dead_letter_subscription
    OCRPIPE_DOCUMENTS_TOPIC          = local.topology.documents_topic
    OCRPIPE_LOG_LEVEL                = var.log_level
    # Every service resolves the same entry of the model table: the splitter its page
    # size, the worker whether figures come with boxes.
    OCRPIPE_OCR_MODEL = local.gpu_model
    # `ocrpipe plan` and `report` size the batch by the GPU instances deployed.
    OCRPIPE_GPU_INSTANCES = tostring(var.gpu_max_instances)
  }

  splitter_env = merge(local.common_env, {
    OCRPIPE_RENDER_PROCESSES = tostring(var.splitter.render_processes)
  })

  worker_env = merge(local.common_env, {
    OCRPIPE_OCR_URL              = google_cloud_run_v2_service.gpu.uri
    OCRPIPE_OCR_AUTH             = "id-token"
    OCRPIPE_OCR_MAX_IN_FLIGHT    = tostring(var.worker_concurrency)
    OCRPIPE_VERIFY_PUSH_AUTH     = "true"
    OCRPIPE_PUSH_AUDIENCE        = local.worker_url
    OCRPIPE_PUSH_SERVICE_ACCOUNT = google_service_account.push.email
  })
}
