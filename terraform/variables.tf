variable "project_id" {
  type        = string
  description = "Google Cloud project that holds everything."
}

variable "region" {
  type        = string
  default     = "europe-west4"
  description = "Region for buckets, Pub/Sub-triggered services and the L4 GPU service. It must offer Cloud Run L4 GPUs (e.g. europe-west1, europe-west4, us-east4, asia-southeast1)."
}

variable "bucket_names" {
  type = object({
    input  = optional(string)
    work   = optional(string)
    output = optional(string)
    source = optional(string)
  })
  default     = {}
  description = "Bucket names (globally unique). Unset ones default to <project_id>-ocrpipe-<role>."
}

variable "output_soft_delete_days" {
  type        = number
  default     = 7
  description = "Deleted or overwritten Markdown stays recoverable this long (GCS soft delete, 7..90 days)."

  validation {
    condition     = var.output_soft_delete_days >= 7 && var.output_soft_delete_days <= 90
    error_message = "GCS soft delete retention is 7 to 90 days."
  }
}

variable "force_destroy_buckets" {
  type        = bool
  default     = false
  description = "Let `terraform destroy` delete non-empty buckets. Keep false in production."
}

variable "deletion_protection" {
  type        = bool
  default     = true
  description = "Cloud Run deletion protection; set false before `terraform destroy`."
}

variable "artifact_registry_repository" {
  type        = string
  default     = "ocrpipe"
  description = "Existing Docker repository (same project and region) that holds the images; the splitter's build also pushes its image there."
}

variable "gpu_image" {
  type        = string
  description = "vLLM + LightOnOCR-2-1B image built from gpu_image/Dockerfile (REGION-docker.pkg.dev/PROJECT/REPO/ocr-gpu:TAG)."
}

variable "worker_image" {
  type        = string
  description = "Worker image built from ocr_worker/Dockerfile (REGION-docker.pkg.dev/PROJECT/REPO/ocr-worker:TAG)."
}

variable "splitter" {
  type = object({
    memory           = optional(string, "4Gi")
    cpu              = optional(string, "2")
    render_processes = optional(number, 2)
    max_instances    = optional(number, 10)
  })
  default     = {}
  description = "Splitter function size. 4Gi holds the input file in /tmp (memory-backed) next to render_processes render processes capped at OCRPIPE_RENDER_MEMORY_MB (1 GiB) each. Pages render in render_processes processes (pypdfium2 is not thread-safe), so give it as many CPUs; one event per instance."
}

variable "reconciler" {
  type = object({
    schedule         = optional(string, "0 */6 * * *")
    timeout          = optional(string, "86400s")
    cpu              = optional(string, "2")
    memory           = optional(string, "4Gi")
    render_processes = optional(number, 2)
  })
  default     = {}
  description = "The reconciler job (reconciler.tf): how often it runs (cron, UTC) and its size. Every 6 h a lost page waits at most 6 h after Pub/Sub dropped it; each run lists the buckets once (cheap) and reads only unfinished documents old enough for a message to be lost. Memory and render_processes as the splitter's: it renders pages whose images expired."
}

variable "worker_max_instances" {
  type        = number
  default     = 3
  description = "Upper bound on worker instances. In-flight OCR requests <= worker_max_instances x worker_concurrency."
}

variable "worker_concurrency" {
  type        = number
  default     = 32
  description = "Pub/Sub push requests one worker instance handles at once (each is one page waiting on the GPU)."

  validation {
    condition     = var.worker_concurrency >= 1 && var.worker_concurrency <= 1000
    error_message = "Cloud Run concurrency is 1..1000."
  }
}

variable "worker_resources" {
  type = object({
    cpu    = optional(string, "2")
    memory = optional(string, "8Gi")
  })
  default     = {}
  description = "CPU and memory of one worker instance. It mostly waits on the GPU, but holds every page in flight (worker_concurrency) about 5.5 times over: worker.tf refuses a memory that cannot hold worker_concurrency of the largest pages (docs/PERFORMANCE.md). Over 4Gi needs at least 2 CPUs."
}

variable "gpu_max_instances" {
  type        = number
  default     = 3
  description = "Upper bound on L4 instances (also bounded by your project's L4 quota)."

  validation {
    condition     = var.gpu_max_instances >= 1
    error_message = "gpu_max_instances must be at least 1."
  }
}

variable "gpu_max_num_seqs" {
  type        = number
  default     = 32
  description = "vLLM --max-num-seqs: pages one L4 decodes in one batch."
}

variable "gpu_concurrency" {
  type        = number
  default     = 32
  description = "Requests Cloud Run sends to one GPU instance; at least gpu_max_num_seqs so the batch can fill, and more only queues inside vLLM."

  validation {
    condition     = var.gpu_concurrency >= 1 && var.gpu_concurrency <= 1000
    error_message = "Cloud Run concurrency is 1..1000."
  }
}

variable "gpu_startup_probe" {
  type = object({
    initial_delay_seconds = optional(number, 30)
    period_seconds        = optional(number, 10)
    failure_threshold     = optional(number, 24)
  })
  default     = {}
  description = "HTTP /health startup probe of the GPU service: vLLM answers 200 only once the model is loaded."

  validation {
    condition = (
      var.gpu_startup_probe.initial_delay_seconds <= 240 &&
      var.gpu_startup_probe.period_seconds * var.gpu_startup_probe.failure_threshold <= 240
    )
    error_message = "Cloud Run allows initial_delay_seconds <= 240 and period_seconds x failure_threshold <= 240."
  }
}

variable "log_level" {
  type        = string
  default     = "INFO"
  description = "OCRPIPE_LOG_LEVEL for the splitter and the worker."
}

variable "labels" {
  type        = map(string)
  default     = {}
  description = "Labels added to every labelled resource."
}

# --- alerts (monitoring.tf; what each alert means: docs/OPERATIONS.md#alerts) -------------

variable "alert_notification" {
  type = object({
    email       = optional(string, "")
    channel_ids = optional(list(string), [])
  })
  default     = {}
  description = "Where alerts go: an email address (terraform creates an email channel for it) and/or ids of existing notification channels (projects/PROJECT/notificationChannels/ID). Both empty: the alert policies still exist and open incidents on Cloud Monitoring's Alerting page, but notify no one."
}

variable "alert_runbook_url" {
  type        = string
  default     = "docs/OPERATIONS.md"
  description = "Where your operators read docs/OPERATIONS.md (e.g. its URL in your Git host). Every alert's documentation links to its entry there by anchor."
}

variable "alert_dead_letter" {
  type = object({
    messages         = optional(number, 0)
    duration_seconds = optional(number, 0)
  })
  default     = {}
  description = "Alert when the dead-letter subscription holds more than `messages` undelivered messages for `duration_seconds` (a multiple of 60). Any dead-lettered page needs an operator within 7 days."

  validation {
    condition     = var.alert_dead_letter.messages >= 0 && var.alert_dead_letter.duration_seconds % 60 == 0
    error_message = "alert_dead_letter: messages >= 0, duration_seconds a multiple of 60."
  }
}

variable "alert_oldest_unacked" {
  type = object({
    age_seconds      = optional(number, 3600)
    duration_seconds = optional(number, 300)
  })
  default     = {}
  description = "Alert when the oldest unacknowledged page message is older than `age_seconds` for `duration_seconds` (a multiple of 60). Pages of an unavailable GPU service dead-letter after about 90 minutes, so one hour leaves time to pause deliveries; raise it if you routinely queue more pages than the GPUs clear in an hour (about 2,200 pages per L4)."

  validation {
    condition     = var.alert_oldest_unacked.age_seconds > 0 && var.alert_oldest_unacked.duration_seconds % 60 == 0
    error_message = "alert_oldest_unacked: age_seconds > 0, duration_seconds a multiple of 60."
  }
}

variable "alert_worker_5xx" {
  type = object({
    ratio            = optional(number, 0.05)
    window_seconds   = optional(number, 300)
    duration_seconds = optional(number, 600)
  })
  default     = {}
  description = "Alert when more than `ratio` (0..1) of the worker's requests in each `window_seconds` answer 5xx, for `duration_seconds`. Both multiples of 60. A healthy worker answers 503 only when the OCR service stayed unavailable for a whole request budget."

  validation {
    condition = (
      var.alert_worker_5xx.ratio > 0 && var.alert_worker_5xx.ratio < 1 &&
      var.alert_worker_5xx.window_seconds >= 60 && var.alert_worker_5xx.window_seconds % 60 == 0 &&
      var.alert_worker_5xx.duration_seconds % 60 == 0
    )
    error_message = "alert_worker_5xx: 0 < ratio < 1, window_seconds >= 60, both durations multiples of 60."
  }
}

variable "alert_splitter_failures" {
  type = object({
    failures       = optional(number, 0)
    window_seconds = optional(number, 600)
  })
  default     = {}
  description = "Alert when the splitter answers 5xx (raised, out of memory, or its 540 s timeout) more than `failures` times in `window_seconds` (>= 60, a multiple of 60)."

  validation {
    condition = (
      var.alert_splitter_failures.failures >= 0 &&
      var.alert_splitter_failures.window_seconds >= 60 && var.alert_splitter_failures.window_seconds % 60 == 0
    )
    error_message = "alert_splitter_failures: failures >= 0, window_seconds >= 60 and a multiple of 60."
  }
}

variable "alert_gpu_at_max" {
  type = object({
    instances        = optional(number)
    duration_seconds = optional(number, 3600)
  })
  default     = {}
  description = "Alert when the GPU service runs at least `instances` instances (unset: gpu_max_instances, its ceiling) for `duration_seconds` (a multiple of 60): pages queue behind a full GPU fleet."

  validation {
    condition     = var.alert_gpu_at_max.duration_seconds >= 60 && var.alert_gpu_at_max.duration_seconds % 60 == 0
    error_message = "alert_gpu_at_max: duration_seconds >= 60 and a multiple of 60."
  }
}

variable "gpu_model" {
  type        = string
  default     = null
  description = "The model baked into gpu_image (its MODEL_ID build argument): an entry of ocrpipe/models.json, whose default it is when null. Every service is told it (OCRPIPE_OCR_MODEL): the worker asks for it by this name and crops figures if its entry says it writes boxes, and the GPU service refuses to start if its image holds another model."
}

variable "gpu_compile_mode" {
  type        = string
  default     = "compiled"
  description = "vLLM on a cold GPU instance: \"compiled\" (torch.compile + CUDA graphs at every start, faster decoding) or \"eager\" (--enforce-eager: starts sooner, decodes slower). docs/DEPLOY.md says how to measure the cold start against the startup probe."

  validation {
    condition     = contains(["compiled", "eager"], var.gpu_compile_mode)
    error_message = "gpu_compile_mode is compiled or eager."
  }
}

variable "operators" {
  type        = list(string)
  default     = []
  description = "Members (user:, group: or serviceAccount:) who run the ocrpipe CLI against this deployment: submit, status, wait, get, retry, dlq list/replay, plan. Each gets exactly the \"operator\" grants of ocrpipe/iam.json (docs/DEPLOY.md, \"Who may do what\"), and may start the reconciler job or act as its account for `ocrpipe reconcile` (reconciler.tf)."

  validation {
    condition     = alltrue([for m in var.operators : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):", m))])
    error_message = "Each operator is an IAM member such as user:ana@example.com or group:ocr-ops@example.com."
  }
}
