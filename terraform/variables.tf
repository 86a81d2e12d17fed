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

variable "work_retention_days" {
  type        = number
  default     = 7
  description = "Rendered page images are deleted from the work bucket after this many days."

  validation {
    condition     = var.work_retention_days >= 1
    error_message = "work_retention_days must be at least 1."
  }
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
    cpu    = optional(string, "1")
    memory = optional(string, "1Gi")
  })
  default     = {}
  description = "CPU and memory of one worker instance (it mostly waits on the GPU)."
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

variable "operators" {
  type        = list(string)
  default     = []
  description = "Members (user:, group: or serviceAccount:) who run the ocrpipe CLI against this deployment: submit, status, wait, get, retry, dlq list/replay. Each gets exactly the \"operator\" grants of ocrpipe/iam.json (docs/DEPLOY.md, \"Who may do what\")."

  validation {
    condition     = alltrue([for m in var.operators : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):", m))])
    error_message = "Each operator is an IAM member such as user:ana@example.com or group:ocr-ops@example.com."
  }
}
