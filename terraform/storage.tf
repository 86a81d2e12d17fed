# Four buckets, all regional, private (public access prevention enforced) and uniform
# bucket-level access (IAM only, no object ACLs).
#
# Versioning is off everywhere, on purpose: an input's generation number is part of every
# output name, so a re-upload is a new document and old output is never overwritten;
# output objects are create-only (if_generation_match=0). What protects against an operator
# deleting results is soft delete on the output bucket. The work bucket is scratch space.

resource "google_storage_bucket" "input" {
  name                        = local.buckets.input
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets
  labels                      = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "work" {
  name                        = local.buckets.work
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets
  labels                      = local.labels

  # Rendered pages are only needed until their page is OCR'd, or dead-lettered and
  # replayed: a message can wait its retention on the push subscription, again on the
  # dead-letter subscription, and then be replayed. The age is in topology.json next to
  # those retentions (ocrpipe/topology.py says why 16 days).
  lifecycle_rule {
    condition {
      age = local.topology.page_image_retention_days
    }
    action {
      type = "Delete"
    }
  }

  soft_delete_policy {
    retention_duration_seconds = 0
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "output" {
  name                        = local.buckets.output
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets
  labels                      = local.labels

  soft_delete_policy {
    retention_duration_seconds = var.output_soft_delete_days * 86400
  }

  depends_on = [google_project_service.apis]
}

# Zipped splitter sources (functions.tf), one object per distinct build (named by MD5).
resource "google_storage_bucket" "source" {
  name                        = local.buckets.source
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets
  labels                      = local.labels

  depends_on = [google_project_service.apis]
}
