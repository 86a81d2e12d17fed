"""The local stack's IAM enforcement: the policy read from ``ocrpipe/iam.json`` and the
authorizing proxies in front of the GCS and Pub/Sub emulators."""
