# The pages topic, its push subscription to the worker, and the dead-letter topic with a
# pull subscription. Names and every number come from ocrpipe/topology.json (main.tf), the
# file the local stack's ocrpipe.local.pubsub_admin.ensure_topology reads too.

resource "google_pubsub_topic" "pages" {
  name   = local.topology.pages_topic
  labels = local.labels

  # Lets the push subscription seek back this far and receive again what it acknowledged
  # (docs/OPERATIONS.md, "A bad worker deploy"); retention in topology.json, chosen with the
  # subscriptions' and the page images' (ocrpipe/topology.py).
  message_retention_duration = "${local.topology.pages_topic_retention_seconds}s"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  name   = local.topology.dead_letter_topic
  labels = local.labels

  depends_on = [google_project_service.apis]
}

# One message per document reaching a terminal state (ocrpipe/notifications.py). Users attach
# their own pull or push subscriptions; see docs/OPERATIONS.md.
resource "google_pubsub_topic" "documents" {
  name   = local.topology.documents_topic
  labels = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "pages_push" {
  name   = local.topology.pages_push_subscription
  topic  = google_pubsub_topic.pages.id
  labels = local.labels

  # For push, the ack deadline is also the HTTP timeout of each delivery; the worker's
  # request timeout and OCR budget are derived from the same number.
  ack_deadline_seconds       = local.topology.ack_deadline_seconds
  message_retention_duration = "${local.topology.message_retention_seconds}s"

  retry_policy {
    minimum_backoff = "${local.topology.retry_minimum_backoff_seconds}s"
    maximum_backoff = "${local.topology.retry_maximum_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = local.topology.max_delivery_attempts
  }

  push_config {
    # The worker serves push deliveries at "/" (ocr_worker/app.py).
    push_endpoint = "${google_cloud_run_v2_service.worker.uri}/"

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.worker_url
    }
  }

  expiration_policy {
    ttl = "" # never expire, even when no page arrives for 31 days
  }

  depends_on = [
    google_pubsub_topic_iam_member.dead_letter_publisher,
    google_service_account_iam_member.pubsub_mints_push_tokens,
  ]
}

# A dead-letter topic without a subscription loses messages: this one keeps them for
# `ocrpipe dlq list/replay`.
resource "google_pubsub_subscription" "dead_letter_pull" {
  name   = local.topology.dead_letter_subscription
  topic  = google_pubsub_topic.dead_letter.id
  labels = local.labels

  ack_deadline_seconds       = local.topology.dead_letter_ack_deadline_seconds
  message_retention_duration = "${local.topology.dead_letter_retention_seconds}s"

  expiration_policy {
    ttl = ""
  }
}
